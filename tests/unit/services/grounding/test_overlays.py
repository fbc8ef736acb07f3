"""Overlays put each sentence's heat where the model looked, on the original pixels."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radreport.model.grounding import Letterbox
from services.common.schemas import Draft, DraftSentence, LetterboxInfo
from services.grounding.overlays import (
    BOX_COLOUR,
    attention_entropy,
    compact_maps,
    heatmap_on_original,
    render_overlay,
    write_overlays,
)

LANDSCAPE, PORTRAIT = (300, 400), (400, 300)  # (H, W): padding top/bottom, left/right


def _one_hot(grid: int, row: int, col: int) -> np.ndarray:
    heatmap = np.zeros((grid, grid), np.float32)
    heatmap[row, col] = 1.0
    return heatmap


def _cell_on_original(letterbox: Letterbox, grid: int, row: int, col: int
                      ) -> tuple[int, int, int, int]:
    cell = letterbox.size / grid
    return letterbox.to_original((col * cell, row * cell, (col + 1) * cell, (row + 1) * cell))


# --- geometry ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [LANDSCAPE, PORTRAIT])
# 384: 16 px cells, the patch grid at any input size; 224: padding off-grid
@pytest.mark.parametrize(("size", "grid"), [(384, 24), (256, 16), (224, 14)])
@pytest.mark.parametrize("where", ["upper left", "centre", "lower right"])
def test_heat_lands_where_the_letterbox_maps_its_cell(shape: tuple[int, int], size: int,
                                                       grid: int, where: str) -> None:
    row, col = {"upper left": (3, 4), "centre": (grid // 2, grid // 2 - 1),
                "lower right": (grid - 4, grid - 5)}[where]
    letterbox = Letterbox.fit(shape, size)
    on_original = heatmap_on_original(_one_hot(grid, row, col), letterbox)
    assert on_original.shape == shape and on_original.max() == pytest.approx(1.0)
    x0, y0, x1, y1 = _cell_on_original(letterbox, grid, row, col)
    y, x = np.unravel_index(on_original.argmax(), shape)
    assert x0 <= x < x1 and y0 <= y < y1
    # bilinear between cell centres: the half-peak region spans exactly the cell
    ys, xs = np.nonzero(on_original >= 0.5)
    hot = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert np.abs(np.subtract(hot, (x0, y0, x1, y1))).max() <= 1, (hot, (x0, y0, x1, y1))


@pytest.mark.parametrize("shape", [LANDSCAPE, PORTRAIT])
def test_heat_in_the_padding_is_cut_away(shape: tuple[int, int]) -> None:
    letterbox = Letterbox.fit(shape, 256)  # two cells of padding on each side of one axis
    corner = heatmap_on_original(_one_hot(16, 0, 0), letterbox)
    assert corner.shape == shape and not corner.any()  # all zero, not NaN
    uniform = heatmap_on_original(np.ones((16, 16)), letterbox)
    np.testing.assert_allclose(uniform, 1.0, atol=1e-6)  # no darkened edges


def test_all_zero_map_stays_zero_and_bad_grids_are_refused() -> None:
    letterbox = Letterbox.fit(LANDSCAPE, 256)
    assert not heatmap_on_original(np.zeros((16, 16)), letterbox).any()
    with pytest.raises(ValueError, match=r"\(16, 8\)"):
        heatmap_on_original(np.zeros((16, 8)), letterbox)


# --- rendering --------------------------------------------------------------------------

def _gradient(shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    return np.tile(np.linspace(0.2, 0.8, width, dtype=np.float32), (height, 1))


@pytest.mark.parametrize("shape", [LANDSCAPE, PORTRAIT])
def test_cold_regions_keep_the_image_and_heat_is_coloured(shape: tuple[int, int]) -> None:
    letterbox = Letterbox.fit(shape, 256)
    heatmap = _one_hot(16, 8, 8)
    display = _gradient(shape)
    overlay = render_overlay(display, heatmap, letterbox, [], "A finding.")
    assert overlay.mode == "RGB"
    assert overlay.width == shape[1] and overlay.height > shape[0]  # legend strip below
    pixels = np.asarray(overlay)[: shape[0]].astype(int)
    gray = np.round(display * 255).astype(int)
    heat = heatmap_on_original(heatmap, letterbox)
    cold = heat == 0
    assert cold.mean() > 0.9
    for channel in range(3):  # alpha 0 where there is no heat: the gray value exactly
        np.testing.assert_array_equal(pixels[..., channel][cold], gray[cold])
    y, x = np.unravel_index(heat.argmax(), shape)
    red, green, blue = pixels[y, x]
    assert red - blue > 40 and (red, green, blue) != (gray[y, x],) * 3


def test_boxes_are_drawn_on_their_edges_only() -> None:
    letterbox = Letterbox.fit(LANDSCAPE, 256)
    display = np.full(LANDSCAPE, 0.5, np.float32)
    box = (20, 30, 80, 90)  # x0, y0, x1, y1 (exclusive), original pixels
    pixels = np.asarray(render_overlay(display, np.zeros((16, 16)), letterbox, [box]))
    assert tuple(pixels[30, 50]) == BOX_COLOUR  # top edge
    assert tuple(pixels[60, 20]) == BOX_COLOUR  # left edge
    assert tuple(pixels[89, 50]) == BOX_COLOUR  # bottom edge, last row inside the box
    assert tuple(pixels[60, 79]) == BOX_COLOUR  # right edge
    assert tuple(pixels[60, 50]) == (128, 128, 128)  # inside
    assert tuple(pixels[29, 50]) == (128, 128, 128)  # just outside
    assert tuple(pixels[60, 80]) == (128, 128, 128)


def test_box_lines_scale_with_the_image() -> None:
    def line_width(shape: tuple[int, int], box: tuple[int, int, int, int]) -> int:
        pixels = np.asarray(render_overlay(np.full(shape, 0.5, np.float32),
                                           np.zeros((16, 16)), Letterbox.fit(shape, 256),
                                           [box]))
        column = pixels[box[1]:box[3], (box[0] + box[2]) // 2]
        return int((column == BOX_COLOUR).all(axis=1).sum() // 2)

    assert line_width((1500, 2000), (200, 300, 800, 900)) > line_width(LANDSCAPE,
                                                                       (20, 30, 80, 90))


def test_caption_is_drawn_in_the_legend_and_long_text_does_not_fail() -> None:
    letterbox = Letterbox.fit(PORTRAIT, 256)
    display = np.full(PORTRAIT, 0.5, np.float32)
    heatmap = np.zeros((16, 16))
    bare = np.asarray(render_overlay(display, heatmap, letterbox, []))
    captioned = np.asarray(render_overlay(display, heatmap, letterbox, [], "Small effusion."))
    assert bare.shape == captioned.shape
    assert (captioned != bare).any() and (captioned[: PORTRAIT[0]] == bare[: PORTRAIT[0]]).all()
    long = " ".join(["pneumothorax"] * 200) + " " + "x" * 500
    assert render_overlay(display, heatmap, letterbox, [], long).size == bare.shape[1::-1]


def test_max_side_shrinks_but_never_enlarges() -> None:
    letterbox = Letterbox.fit(PORTRAIT, 256)
    display = np.full(PORTRAIT, 0.5, np.float32)
    full = render_overlay(display, np.ones((16, 16)), letterbox, [(1, 1, 9, 9)], "A.")
    small = render_overlay(display, np.ones((16, 16)), letterbox, [(1, 1, 9, 9)], "A.",
                           max_side=200)
    assert max(small.size) == 200 and small.mode == "RGB"
    assert small.size[0] == pytest.approx(full.size[0] * 200 / full.size[1], abs=1)
    same = render_overlay(display, np.ones((16, 16)), letterbox, [], "A.", max_side=4000)
    assert same.size == full.size


def test_a_display_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(400, 300\).*\(300, 400\)"):
        render_overlay(np.zeros(PORTRAIT), np.zeros((16, 16)), Letterbox.fit(LANDSCAPE, 256),
                       [])


# --- files ------------------------------------------------------------------------------

def _draft(texts: tuple[str, ...] = ("A.", "B."), shape: tuple[int, int] = (600, 700)) -> Draft:
    letterbox = Letterbox.fit(shape, 256)
    sentences = []
    for i, text in enumerate(texts):
        heat = np.zeros((16, 16))
        heat[4 + i, 5] = 0.123456
        heat[10, 10] = 1.0
        sentences.append(DraftSentence(
            text=text, section="impression" if i == len(texts) - 1 else "findings",
            boxes=[(10 + i, 10, 50, 60)], heatmap=heat.tolist(), labels=[]))
    return Draft(findings=" ".join(texts[:-1]), impression=texts[-1], sentences=sentences,
                 label_probs={}, token_ids=[], model_version="m:1",
                 letterbox=LetterboxInfo(size=letterbox.size, scale=letterbox.scale,
                                         pad_x=letterbox.pad_x, pad_y=letterbox.pad_y,
                                         original_shape=shape),
                 inference_ms=1.0)


def test_files_are_written_full_and_preview_without_leftovers(tmp_path: Path) -> None:
    out_dir = tmp_path / "overlays"  # created when missing
    files = write_overlays(np.full((600, 700), 0.3, np.float32), _draft(), out_dir,
                           preview_side=256)
    assert [f.index for f in files] == [0, 1]
    assert [(f.full.name, f.preview.name) for f in files] == [
        ("sentence-00.png", "sentence-00.preview.png"),
        ("sentence-01.png", "sentence-01.preview.png")]
    for f in files:
        for path in (f.full, f.preview):
            with Image.open(path) as image:
                assert image.format == "PNG"
                image.verify()  # the whole file, not just its header
        with Image.open(f.full) as full, Image.open(f.preview) as preview:
            assert full.mode == "RGB" and full.width == 700 and full.height > 600
            assert max(preview.size) == 256
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "sentence-00.png", "sentence-00.preview.png", "sentence-01.png",
        "sentence-01.preview.png"]  # no temporary files left


def test_writing_again_replaces_the_files(tmp_path: Path) -> None:
    display = np.full((600, 700), 0.3, np.float32)
    first = write_overlays(display, _draft(), tmp_path)
    before = first[0].full.read_bytes()
    again = write_overlays(display, _draft(("C is a longer sentence.", "B.")), tmp_path)
    assert [f.full for f in again] == [f.full for f in first]
    assert again[0].full.read_bytes() != before
    assert len(list(tmp_path.iterdir())) == 4


def test_a_failed_write_leaves_no_partial_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_overlays(np.full((600, 700), 0.3, np.float32), _draft(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_letterbox_info_round_trips() -> None:
    letterbox = Letterbox.fit((600, 700), 256)
    assert _draft().letterbox.to_letterbox() == letterbox


# --- maps for the API and monitoring ---------------------------------------------------

def test_entropy_is_in_bits_of_the_normalised_map() -> None:
    assert attention_entropy(np.ones((16, 16))) == pytest.approx(8.0)
    assert attention_entropy(np.full((7, 7), 0.3)) == pytest.approx(math.log2(49))
    one_hot = _one_hot(16, 0, 0)
    assert attention_entropy(one_hot) == 0.0
    assert attention_entropy(5 * one_hot) == 0.0
    two = np.zeros((16, 16))
    two[1, 1] = two[9, 3] = 2.0
    assert attention_entropy(two) == pytest.approx(1.0)
    assert attention_entropy(np.zeros((16, 16))) == 0.0


def test_compact_maps_round_and_keep_the_sentence_order() -> None:
    draft = _draft(("First.", "Second.", "Third."))
    maps = compact_maps(draft, digits=2)
    assert maps["grid"] == 16 and maps["model_version"] == "m:1"
    assert maps["letterbox"]["original_shape"] == [600, 700]
    assert [(s["index"], s["text"], s["section"]) for s in maps["sentences"]] == [
        (0, "First.", "findings"), (1, "Second.", "findings"), (2, "Third.", "impression")]
    for i, sentence in enumerate(maps["sentences"]):
        assert sentence["boxes"] == [[10 + i, 10, 50, 60]]
        assert sentence["heatmap"][4 + i][5] == 0.12 and sentence["heatmap"][10][10] == 1.0
        assert len(sentence["heatmap"]) == 16 and len(sentence["heatmap"][0]) == 16
    assert compact_maps(draft)["sentences"][0]["heatmap"][4][5] == 0.123  # 3 digits default
    assert json.loads(json.dumps(maps)) == maps  # plain JSON


def test_compact_maps_of_a_draft_without_sentences() -> None:
    maps = compact_maps(_draft().model_copy(update={"sentences": []}))
    assert maps["grid"] == 0 and maps["sentences"] == []
