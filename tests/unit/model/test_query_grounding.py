"""Sentence maps refined with the v2 queries' maps, and their tunings fitted on validate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radreport.data.labels import CHEXPERT_LABELS
from radreport.eval.labeler import DEVICE_KINDS, named_devices
from radreport.eval.metrics import grounding_iou
from radreport.model.fit_grounding import GroundingSample, best_tuning, fit_tunings, pooled_region
from radreport.model.query_grounding import (
    MapTuning,
    SentenceGrounder,
    blend,
    kind_query_map,
    left_share,
    on_grid,
    sentence_kind,
    side_from_share,
)

LABELS = CHEXPERT_LABELS
ANATOMY = len(LABELS)  # first anatomical query row: cardiac, then left lung, right lung...


@pytest.mark.parametrize(("text", "kind", "rows"), [
    ("Small right pleural effusion.", "finding:Pleural Effusion", (10,)),
    ("Patchy right lower lobe consolidation, likely pneumonia.", "finding:Consolidation",
     (6, 7)),
    ("Mild atelectasis at the right lung base.", "finding:Atelectasis", (8,)),
    ("No pleural effusion or pneumothorax.", "organ:lungs", (ANATOMY + 1, ANATOMY + 2)),
    ("Heart size is normal.", "organ:heart", (ANATOMY,)),
    ("The mediastinal contours are normal.", "organ:mediastinum", (ANATOMY + 3,)),
    ("No acute osseous abnormality.", "organ:bones", ()),
    ("The soft tissues are unremarkable.", "other", ()),
])
def test_sentence_kinds_name_their_queries(text: str, kind: str, rows: tuple[int, ...]) -> None:
    found = sentence_kind(text, LABELS)
    assert (found.name, found.query_rows) == (kind, rows)


def _blob(grid: int, row: int, col: int, radius: float) -> np.ndarray:
    y, x = np.mgrid[:grid, :grid]
    return np.exp(-((y - row) ** 2 + (x - col) ** 2) / (2 * radius**2))


def test_blend_moves_the_map_to_the_query_and_gamma_widens_it() -> None:
    decoder, query = _blob(12, 2, 2, 1.5), _blob(12, 8, 9, 1.5)
    assert np.allclose(blend(decoder, query, MapTuning(0.0, 1.0)), decoder / decoder.sum())
    pulled = blend(decoder, query, MapTuning(1.0, 1.0))
    assert np.unravel_index(pulled.argmax(), pulled.shape) == (8, 9)
    assert pulled.dtype == np.float32 and pulled.sum() == pytest.approx(1.0, abs=1e-5)
    wide = blend(decoder, query, MapTuning(1.0, 0.4))
    assert (wide >= 0.5 * wide.max()).sum() > (pulled >= 0.5 * pulled.max()).sum()


def test_grounder_refines_by_kind_and_keeps_untuned_maps(tmp_path: Path) -> None:
    grounder = SentenceGrounder(LABELS, {"finding": MapTuning(1.0, 1.0),
                                         "organ:heart": MapTuning(0.5, 0.7)}, "validate")
    decoder = _blob(6, 0, 0, 1.0).astype(np.float32)
    queries = np.full((20, 36), 1e-6, dtype=np.float32)
    queries[10, 27] = 1.0  # the effusion query looks at one cell
    effusion = grounder.refine("Small left pleural effusion.", decoder, queries)
    assert np.unravel_index(effusion.argmax(), effusion.shape) == (4, 3)
    assert grounder.refine("The soft tissues are unremarkable.", decoder, queries) is decoder
    assert grounder.refine("Small left pleural effusion.", decoder, None).argmax() == 0
    grounder.save(tmp_path / "grounding.json")
    assert SentenceGrounder.load(tmp_path / "grounding.json", LABELS) == grounder
    assert SentenceGrounder.load(tmp_path / "absent.json", LABELS).tunings == {}
    with pytest.raises(ValueError, match="other labels"):
        SentenceGrounder.load(tmp_path / "grounding.json", LABELS[:5])


@pytest.mark.parametrize(("text", "devices"), [
    ("Endotracheal tube terminates 4.1 cm above the carina.", (0,)),
    ("A right subclavian line is seen with tip in the superior vena cava.", (1,)),
    ("Left internal jugular catheter tip projects over the superior vena cava.", (1,)),
    ("Dual-lead cardiac pacemaker projects over the left chest wall.", (2,)),
    ("Left chest wall pacemaker with leads in the right atrium and right ventricle.", (2,)),
    ("Endotracheal tube and right jugular central venous catheter in place.", (0, 1)),
    ("Support devices are unchanged.", ()),
])
def test_device_sentences_ground_on_the_device_they_name(text: str,
                                                          devices: tuple[int, ...]) -> None:
    assert named_devices(text) == devices
    kind = sentence_kind(text, LABELS)
    device_row = len(LABELS) + 6
    assert kind.name == "finding:Support Devices"
    assert kind.device_rows == tuple(device_row + i for i in devices)
    coarse = np.random.default_rng(0).random((20, 16))
    fine = np.random.default_rng(1).random((20 + len(DEVICE_KINDS), 16))
    support = LABELS.index("Support Devices")
    coarse_map = kind_query_map(kind, coarse, (4, 4))
    assert coarse_map is not None  # no device rows in the coarse maps: the query's own
    np.testing.assert_array_equal(coarse_map, coarse[support].reshape(4, 4))
    fine_map = kind_query_map(kind, fine, (4, 4))
    rows = [device_row + i for i in devices] or [support]
    assert fine_map is not None
    np.testing.assert_allclose(fine_map, fine[rows].mean(axis=0).reshape(4, 4))


def test_a_non_device_sentence_names_no_device_row() -> None:
    assert sentence_kind("Kerley B lines are seen.", LABELS).device_rows == ()
    assert sentence_kind("Small left pleural effusion.", LABELS).device_rows == ()


def test_sentences_ground_on_the_fine_grid_when_the_maps_are_finer() -> None:
    """A fine head's maps (24 x 24 here) take the decoder's 6 x 6 map up to their grid; every
    sentence of a report, tuned or not, comes out on that one grid."""
    grounder = SentenceGrounder(LABELS, {"finding": MapTuning(1.0, 1.0)})
    decoder = _blob(6, 1, 1, 1.0).astype(np.float32)
    fine = np.full((20, 24 * 24), 1e-6, dtype=np.float32)
    fine[10, 17 * 24 + 13] = 1.0
    effusion = grounder.refine("Small left pleural effusion.", decoder, fine)
    other = grounder.refine("The soft tissues are unremarkable.", decoder, fine)
    assert effusion.shape == other.shape == (24, 24)
    assert np.unravel_index(effusion.argmax(), effusion.shape) == (17, 13)
    assert other.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(other, on_grid(decoder, 24))
    assert on_grid(decoder, 6) is decoder
    with pytest.raises(ValueError, match="cannot go down"):
        on_grid(decoder, 3)


def test_fit_prefers_the_query_where_it_holds_the_region() -> None:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(30):
        row, col = 3 + i % 6, 4 + i % 5
        region = np.zeros((96, 96), dtype=bool)
        region[row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] = True
        query = _blob(12, row, col, 0.6)
        decoder = rng.random((12, 12))  # looks anywhere
        samples.append(GroundingSample("finding:Lung Lesion", decoder, query, region))
    tuning, score = best_tuning(samples)
    assert tuning.query_weight == 1.0
    assert score > 1.5  # mean IoU + pointing of the query's own map
    tunings = fit_tunings(samples, min_sentences=10)
    assert set(tunings) == {"finding", "finding:Lung Lesion"}
    assert fit_tunings(samples, min_sentences=31) == {}


def test_pooled_regions_keep_thin_structures() -> None:
    line = np.zeros((512, 512), dtype=bool)
    line[100:102, :] = True  # a 2 px tube
    pooled = pooled_region(line)
    assert pooled.shape == (128, 128) and pooled[25].all() and pooled.sum() == 128
    assert grounding_iou(np.ones((4, 4)), pooled_region(np.ones((64, 64), bool))) == 1.0


def test_sides_are_read_from_the_query_maps_around_the_midline() -> None:
    grid = 8
    maps = np.full((20, grid, grid), 1e-6, dtype=np.float32)
    maps[ANATOMY + 3, :, 3:5] = 1.0  # the mediastinum query: the image's middle columns
    maps[10, 5, 6] = 1.0  # the effusion query: the image's right = the patient's left
    maps[8, 6, 1], maps[8, 6, 6] = 1.0, 0.8  # atelectasis: both bases
    flat = maps.reshape(20, -1)
    assert left_share(flat, [10], len(LABELS)) > 0.99
    assert 0.4 < left_share(flat, [8], len(LABELS)) < 0.5
    assert [side_from_share(x, 0.15) for x in (0.05, 0.5, 0.9)] == ["right", "bilateral",
                                                                     "left"]
    grounder = SentenceGrounder(LABELS, side_cutoffs={"Pleural Effusion": 0.2,
                                                      "Atelectasis": 0.15})
    assert grounder.sides(flat) == {"Pleural Effusion": "left", "Atelectasis": "bilateral"}
    assert grounder.sides(None) == {}
