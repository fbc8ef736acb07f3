"""Overlays put each sentence's heat where the model looked, on the original pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radreport.model.grounding import Letterbox
from services.common.schemas import Draft, DraftSentence, LetterboxInfo
from services.grounding.overlays import (
    attention_entropy,
    compact_maps,
    heatmap_on_original,
    render_overlay,
    write_overlays,
)


@pytest.mark.parametrize("shape", [(300, 400), (400, 300)])  # padding on either axis
@pytest.mark.parametrize("cell", [(3, 12), (8, 4), (12, 9)])
def test_heat_lands_where_the_letterbox_maps_its_cell(shape: tuple[int, int],
                                                       cell: tuple[int, int]) -> None:
    letterbox = Letterbox.fit(shape, 256)
    heatmap = np.zeros((16, 16), np.float32)
    row, col = cell
    heatmap[row, col] = 1.0
    on_original = heatmap_on_original(heatmap, letterbox)
    assert on_original.shape == shape and on_original.max() == pytest.approx(1.0)
    y, x = np.unravel_index(on_original.argmax(), shape)
    x0, y0, x1, y1 = letterbox.to_original((col * 16, row * 16, (col + 1) * 16, (row + 1) * 16))
    assert x0 - 2 <= x <= x1 + 2 and y0 - 2 <= y <= y1 + 2


def test_cold_regions_keep_the_image_and_boxes_are_drawn() -> None:
    letterbox = Letterbox.fit((300, 400), 256)
    heatmap = np.zeros((16, 16), np.float32)
    heatmap[8, 8] = 1.0
    display = np.full((300, 400), 0.5, np.float32)
    image = np.asarray(render_overlay(display, heatmap, letterbox, [(20, 30, 80, 90)], "A."))
    assert image.shape[1] == 400 and image.shape[0] > 300  # legend strip below
    assert tuple(image[5, 390]) == (128, 128, 128)  # no heat there: the gray image
    hot = np.unravel_index(heatmap_on_original(heatmap, letterbox).argmax(), (300, 400))
    assert len(set(image[hot].tolist())) > 1  # coloured, not gray
    assert tuple(image[30, 50]) != (128, 128, 128)  # on the box's top edge
    assert tuple(image[60, 50]) == (128, 128, 128)  # inside the box


def _draft() -> Draft:
    heat = np.zeros((16, 16))
    heat[4, 5] = 1.0
    return Draft(findings="A. B.", impression="C.",
                 sentences=[DraftSentence(text=t, section="findings", boxes=[(10, 10, 50, 60)],
                                          heatmap=heat.tolist(), labels=[]) for t in "AB"],
                 label_probs={}, token_ids=[], model_version="m:1",
                 letterbox=LetterboxInfo(size=256, scale=256 / 700, pad_x=0,
                                         pad_y=(256 - 600 * 256 / 700) / 2,
                                         original_shape=(600, 700)),
                 inference_ms=1.0)


def test_files_are_written_full_and_preview_without_leftovers(tmp_path: Path) -> None:
    files = write_overlays(np.full((600, 700), 0.3, np.float32), _draft(), tmp_path,
                           preview_side=256)
    assert [f.index for f in files] == [0, 1]
    for f in files:
        assert Image.open(f.full).size[0] == 700
        assert max(Image.open(f.preview).size) == 256
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sentence-00.png", "sentence-00.preview.png", "sentence-01.png",
        "sentence-01.preview.png"]


def test_entropy_and_compact_maps() -> None:
    assert attention_entropy(np.ones((16, 16))) == pytest.approx(8.0)
    one_hot = np.zeros((16, 16))
    one_hot[0, 0] = 1
    assert attention_entropy(one_hot) == 0.0
    maps = compact_maps(_draft(), digits=2)
    assert maps["grid"] == 16 and [s["text"] for s in maps["sentences"]] == ["A", "B"]
    assert maps["sentences"][0]["heatmap"][4][5] == 1.0
