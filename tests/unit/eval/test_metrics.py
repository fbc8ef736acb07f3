"""Evaluation metrics: NLG scores vs pycocoevalcap, clinical F1, grounding, bootstrap, table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radreport.data.labels import CHEXPERT_LABELS, label_vector
from radreport.eval.labeler import report_vector
from radreport.eval.metrics import (
    CLINICAL_METRICS,
    GROUNDING_METRICS,
    NLG_METRICS,
    Statistic,
    bootstrap_ci,
    box_iou,
    clinical_scores,
    corpus_bleu,
    evaluate_reports,
    format_table,
    grounding_iou,
    grounding_statistics,
    label_matrix,
    mask_iou,
    nlg_scores,
    nlg_statistics,
    pointing_hit,
    tokenize,
    upsample,
)

REFS = [
    "The heart size is normal. No pleural effusion or pneumothorax.",
    "Small left pleural effusion with adjacent atelectasis.",
    "There is a 1.5 cm nodule in the right upper lobe.",
    "Lungs are clear. No acute cardiopulmonary process.",
    "Acute displaced fracture of the left sixth rib.",
]
HYPS = [
    "The heart size is normal. No pleural effusion or pneumothorax.",  # identical
    "Small right pleural effusion.",  # partial overlap, shorter
    "Zebra giraffe kangaroo.",  # disjoint
    "The lungs are clear. No acute cardiopulmonary process.",
    "Fracture of the left sixth rib, acute.",
]
DISJOINT = 2


def col(label: str) -> int:
    return CHEXPERT_LABELS.index(label)


# --- NLG ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed() -> dict[str, np.ndarray]:
    return nlg_scores(REFS, HYPS)


@pytest.fixture(scope="module")
def identical() -> dict[str, np.ndarray]:
    return nlg_scores(REFS, REFS)


def test_identical_reports_score_perfectly(identical: dict[str, np.ndarray]) -> None:
    bleu = corpus_bleu(identical)
    assert bleu[3] == pytest.approx(1.0, abs=1e-6)
    assert bleu[0] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(identical["ROUGE-L"], 1.0)
    assert identical["METEOR"].min() > 0.95


def test_disjoint_hypothesis_scores_near_zero(mixed: dict[str, np.ndarray]) -> None:
    for name in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert mixed[name][DISJOINT] < 1e-6, name
    # the identical study is still perfect in the same corpus
    assert mixed["ROUGE-L"][0] == pytest.approx(1.0)
    assert mixed["CIDEr"][0] > mixed["CIDEr"][1] > 0


def test_tokenizer_lowercases_and_drops_punctuation() -> None:
    assert tokenize(["No acute process.", ""]) == ["no acute process", ""]


@pytest.mark.parametrize("idx", [None, [0, 2], [1, 1, 3, 4, 4, 4]])
def test_corpus_bleu_reproduces_pycocoevalcap(mixed: dict[str, np.ndarray],
                                               idx: list[int] | None) -> None:
    from pycocoevalcap.bleu.bleu import Bleu

    tokens = tokenize([*REFS, *HYPS])
    refs, hyps = tokens[: len(REFS)], tokens[len(REFS):]
    studies = range(len(REFS)) if idx is None else idx
    gts = {j: [refs[i]] for j, i in enumerate(studies)}
    res = {j: [hyps[i]] for j, i in enumerate(studies)}
    expected, _ = Bleu(4).compute_score(gts, res, verbose=0)
    ours = corpus_bleu(mixed, None if idx is None else np.array(idx))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)
    assert all(0 < b < 1 for b in ours)


def test_nlg_statistics_resample_studies(mixed: dict[str, np.ndarray]) -> None:
    stats = nlg_statistics(mixed)
    assert set(stats) == set(NLG_METRICS)
    idx = np.array([0, 0, 4])
    assert stats["BLEU-2"](idx) == corpus_bleu(mixed, idx)[1]
    # CIDEr keeps the full set's document frequencies: a resample averages its scores
    assert stats["CIDEr"](idx) == pytest.approx(mixed["CIDEr"][idx].mean())
    assert stats["METEOR"](np.arange(5)) == pytest.approx(mixed["METEOR"].mean())


# --- clinical -------------------------------------------------------------------------------

def clinical_case() -> tuple[np.ndarray, np.ndarray]:
    """Four studies; hand-counted below."""
    ref = np.zeros((4, 14), dtype=int)
    hyp = np.zeros((4, 14), dtype=int)
    ref[0, [col("Cardiomegaly"), col("Pleural Effusion")]] = 1
    ref[1, col("Pneumothorax")] = 1
    ref[2, col("Support Devices")] = 1
    hyp[0, col("Cardiomegaly")] = 1  # TP cardiomegaly, FN effusion
    hyp[1, [col("Pneumothorax"), col("Fracture")]] = 1  # TP pneumothorax, FP fracture
    # study 2: FN support devices; study 3: FP cardiomegaly
    hyp[3, col("Cardiomegaly")] = 1
    return ref, hyp


def test_clinical_f1_by_hand() -> None:
    stats = clinical_scores(*clinical_case())
    all_ = np.arange(4)
    # TP 2, FP 2, FN 2 -> 2*2 / (2*2 + 2 + 2)
    assert stats["Clinical F1 (micro)"](all_) == pytest.approx(0.5)
    # present labels: cardiomegaly 2/3, effusion 0, pneumothorax 1, devices 0; fracture has
    # no positive reference and is left out
    assert stats["Clinical F1 (macro)"](all_) == pytest.approx((2 / 3 + 0 + 1 + 0) / 4)
    assert stats["precision Cardiomegaly"](all_) == pytest.approx(0.5)
    assert stats["recall Cardiomegaly"](all_) == pytest.approx(1.0)
    assert stats["F1 Cardiomegaly"](all_) == pytest.approx(2 / 3)
    assert stats["precision Fracture"](all_) == 0.0
    assert math.isnan(stats["recall Fracture"](all_))
    assert math.isnan(stats["precision Edema"](all_))


def test_clinical_scores_on_resamples() -> None:
    stats = clinical_scores(*clinical_case())
    assert stats["Clinical F1 (micro)"](np.array([1])) == pytest.approx(2 / 3)
    assert stats["Clinical F1 (micro)"](np.array([3])) == 0.0
    assert math.isnan(stats["Clinical F1 (macro)"](np.array([3])))
    assert math.isnan(stats["Critical sensitivity"](np.array([3])))
    # a repeated study counts twice: TP 2 FP 2 FN 0 on pneumothorax/fracture
    assert stats["Clinical F1 (micro)"](np.array([1, 1])) == pytest.approx(2 / 3)


def test_critical_sensitivity_counts_only_critical_labels() -> None:
    ref, hyp = clinical_case()
    all_ = np.arange(4)
    # critical: pneumothorax TP, effusion FN; the fracture FP does not lower sensitivity
    assert clinical_scores(ref, hyp)["Critical sensitivity"](all_) == pytest.approx(0.5)
    missed = hyp.copy()
    missed[0, col("Cardiomegaly")] = 0  # a non-critical miss changes nothing
    assert clinical_scores(ref, missed)["Critical sensitivity"](all_) == pytest.approx(0.5)
    caught = hyp.copy()
    caught[0, col("Pleural Effusion")] = 1
    assert clinical_scores(ref, caught)["Critical sensitivity"](all_) == pytest.approx(1.0)


def test_label_matrix_counts_uncertain_as_positive() -> None:
    matrix = label_matrix([{"Edema": -1, "Cardiomegaly": 0}, label_vector({"Fracture"})])
    assert matrix.shape == (2, 14)
    assert matrix[0, col("Edema")] == 1 and matrix[0].sum() == 1
    assert matrix[1, col("Fracture")] == 1


def test_clinical_scores_reject_bad_shapes() -> None:
    with pytest.raises(ValueError):
        clinical_scores(np.zeros((3, 14)), np.zeros((2, 14)))
    with pytest.raises(ValueError):
        clinical_scores(np.zeros((3, 13)), np.zeros((3, 13)))


# --- grounding ------------------------------------------------------------------------------

def test_box_iou() -> None:
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert box_iou((0, 0, 2, 2), (2, 0, 4, 2)) == 0.0  # touching edges, exclusive ends


def test_mask_iou() -> None:
    a = np.zeros((4, 4), dtype=bool)
    b = np.zeros((4, 4), dtype=bool)
    a[:2, :2] = True
    b[:2, :] = True
    assert mask_iou(a, b) == pytest.approx(4 / 8)
    assert math.isnan(mask_iou(np.zeros((2, 2)), np.zeros((2, 2))))
    with pytest.raises(ValueError):
        mask_iou(a, b[:2])


def test_nearest_upsample_maps_cells_to_pixel_blocks() -> None:
    grid = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(upsample(grid, (4, 6), "nearest"),
                                  np.kron(grid, np.ones((2, 3))))
    # 2 cells over 3 pixels: pixel centres 0.5, 1.5, 2.5 fall in cells 0, 1, 1
    np.testing.assert_array_equal(upsample(grid, (3, 2), "nearest")[:, 0], [1, 3, 3])


def test_bilinear_upsample_interpolates_between_cell_centres() -> None:
    grid = np.array([[0.0], [1.0]])
    # align_corners=False: source rows -0.25, 0.25, 0.75, 1.25, clamped at the border
    np.testing.assert_allclose(upsample(grid, (4, 1))[:, 0], [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(upsample(np.full((3, 5), 2.0), (7, 9)), 2.0)
    same = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(upsample(same, (3, 4)), same)


def test_pointing_game_on_coarser_grid() -> None:
    heatmap = np.array([[0.1, 0.2], [0.9, 0.3]])  # peak in the bottom-left cell
    mask = np.zeros((8, 8), dtype=bool)
    mask[4:, :4] = True
    assert pointing_hit(heatmap, mask)
    assert not pointing_hit(heatmap, ~mask)
    # only the pixel under the peak cell's centre counts: (row 6, col 2) on an 8x8 image
    dot = np.zeros((8, 8), dtype=bool)
    dot[6, 2] = True
    assert pointing_hit(heatmap, dot)
    dot = np.roll(dot, 1, axis=1)
    assert not pointing_hit(heatmap, dot)


def test_pointing_game_at_full_resolution() -> None:
    heatmap = np.zeros((5, 5))
    heatmap[3, 1] = 1.0
    mask = np.zeros((5, 5), dtype=bool)
    mask[3, 1] = True
    assert pointing_hit(heatmap, mask)


def test_grounding_iou_thresholds_relative_to_max() -> None:
    heatmap = np.array([[0.0, 0.0], [0.0, 7.0]])  # the scale does not matter
    mask = np.zeros((4, 4), dtype=bool)
    mask[2:, 2:] = True
    assert grounding_iou(heatmap, mask, mode="nearest") == pytest.approx(1.0)
    # bilinear: rows/cols weigh 0, .25, .75, 1 -> products >= .5 only in the 2x2 corner
    assert grounding_iou(heatmap, mask) == pytest.approx(1.0)
    wide = np.zeros((4, 4), dtype=bool)
    wide[2:, :] = True
    assert grounding_iou(heatmap, wide, mode="nearest") == pytest.approx(0.5)
    assert grounding_iou(np.zeros((2, 2)), mask) == 0.0
    with pytest.raises(ValueError):
        grounding_iou(heatmap, np.zeros((4, 4), dtype=bool))


def test_grounding_statistics_pool_sentences() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    mask[2:, 2:] = True
    hit = np.array([[0.0, 0.0], [0.0, 1.0]])
    miss = np.array([[1.0, 0.0], [0.0, 0.0]])
    wide = np.zeros((4, 4), dtype=bool)
    wide[2:, :] = True
    grounding = [[(hit, mask), (hit, wide)], [], [(miss, mask)]]
    stats = grounding_statistics(grounding)
    assert set(stats) == set(GROUNDING_METRICS)
    all_ = np.arange(3)
    assert stats["Grounding IoU"](all_) == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert stats["Pointing game"](all_) == pytest.approx(2 / 3)
    assert math.isnan(stats["Pointing game"](np.array([1])))
    assert stats["Pointing game"](np.array([0, 2, 2])) == pytest.approx(2 / 4)


# --- bootstrap and table --------------------------------------------------------------------

def mean_of(values: np.ndarray) -> Statistic:
    return lambda idx: float(values[idx].mean())


def test_bootstrap_ci_contains_point_and_is_seeded() -> None:
    values = np.random.default_rng(1).normal(size=200)
    point, low, high = bootstrap_ci(mean_of(values), 200, resamples=500)
    assert point == pytest.approx(values.mean())
    assert low < point < high
    assert bootstrap_ci(mean_of(values), 200, resamples=500) == (point, low, high)
    assert bootstrap_ci(mean_of(values), 200, resamples=500, seed=1) != (point, low, high)


def test_bootstrap_ci_shrinks_with_more_studies() -> None:
    values = np.random.default_rng(2).normal(size=4000)
    small = bootstrap_ci(mean_of(values[:100]), 100, resamples=300)
    large = bootstrap_ci(mean_of(values), 4000, resamples=300)
    assert large[2] - large[1] < 0.5 * (small[2] - small[1])


def test_bootstrap_ci_skips_undefined_resamples() -> None:
    assert all(math.isnan(v) for v in bootstrap_ci(lambda idx: math.nan, 5, resamples=10))
    point, low, high = bootstrap_ci(lambda idx: 1.0 if 0 in idx else math.nan, 3, resamples=50)
    assert (point, low, high) == (1.0, 1.0, 1.0)


def test_format_table_has_every_system_and_metric() -> None:
    rows = {
        "grounded model": {"BLEU-4": (0.912, 0.901, 0.925), "Pointing game": (0.5, 0.4, 0.6)},
        "template baseline": {"BLEU-4": (0.1, 0.05, 0.15)},
        "no-grounding baseline": {"BLEU-4": (math.nan, math.nan, math.nan)},
    }
    table = format_table(rows)
    for name in [*rows, "BLEU-4", "Pointing game"]:
        assert name in table
    assert "0.912 [0.901, 0.925]" in table
    assert "n/a [n/a, n/a]" in table
    lines = table.splitlines()
    assert len(lines) == 2 + 2  # header, rule, two metrics
    assert lines[-1].split()[-1] == "-"  # a baseline without grounding


def test_evaluate_reports_end_to_end() -> None:
    refs = REFS[:4]
    labels = [report_vector(text) for text in refs]
    mask = np.zeros((4, 4), dtype=bool)
    mask[2:, 2:] = True
    grounding = [[(np.array([[0.0, 0.0], [0.0, 1.0]]), mask)] for _ in refs]
    result = evaluate_reports(refs, refs, labels, grounding=grounding, resamples=50)
    assert list(result) == [*NLG_METRICS, *CLINICAL_METRICS, *GROUNDING_METRICS]
    assert result["Clinical F1 (micro)"] == (1.0, 1.0, 1.0)
    assert result["Pointing game"] == (1.0, 1.0, 1.0)
    assert result["ROUGE-L"][0] == pytest.approx(1.0)
    no_grounding = evaluate_reports(refs, HYPS[:4], np.array(label_matrix(labels)),
                                    per_label=True, resamples=20)
    assert "Grounding IoU" not in no_grounding and "F1 Pneumothorax" in no_grounding
    table = format_table({"grounded model": result, "no-grounding baseline": no_grounding})
    assert all(metric in table for metric in result)
