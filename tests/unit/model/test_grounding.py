"""Sentence grounding maps and boxes from token attention (no torch needed)."""

from __future__ import annotations

import numpy as np
import pytest

from radreport.model.grounding import (
    FINDING_WEIGHT,
    FUNCTION_WEIGHT,
    Letterbox,
    map_boxes,
    sentence_maps,
    sentence_spans,
    token_weight,
)

TOKENS = ["small", "left", "pleural", "effusion", ".", "no", "pneumothorax", "."]


def one_hot_attention(cells: list[int], grid: int = 4) -> np.ndarray:
    attention = np.zeros((len(cells), grid * grid), dtype=np.float32)
    attention[np.arange(len(cells)), cells] = 1.0
    return attention


def test_sentences_end_at_full_stops_and_keep_a_trailing_fragment() -> None:
    assert sentence_spans(TOKENS) == [(0, 5), (5, 8)]
    assert sentence_spans(["no", "effusion"]) == [(0, 2)]
    assert sentence_spans([]) == []


def test_finding_words_outweigh_function_words() -> None:
    assert token_weight("effusion") == FINDING_WEIGHT
    assert token_weight("Left") == FINDING_WEIGHT
    assert token_weight(".") == FUNCTION_WEIGHT
    assert token_weight("the") == FUNCTION_WEIGHT
    assert token_weight("2") == FUNCTION_WEIGHT
    assert FUNCTION_WEIGHT < token_weight("blunting") < FINDING_WEIGHT


def test_sentence_map_is_the_weighted_mean_of_its_tokens() -> None:
    # "small"->cell 0, "left"->5, "pleural"->5, "effusion"->5, "."->15, then sentence 2
    attention = one_hot_attention([0, 5, 5, 5, 15, 1, 2, 15])
    first, second = sentence_maps(TOKENS, attention)
    assert first.shape == (4, 4)
    assert np.isclose(first.sum(), 1.0) and np.isclose(second.sum(), 1.0)
    assert np.unravel_index(first.argmax(), first.shape) == (1, 1)  # cell 5
    total = 1.0 + 3 * FINDING_WEIGHT + FUNCTION_WEIGHT
    assert np.isclose(first[1, 1], 3 * FINDING_WEIGHT / total)
    assert np.isclose(first[3, 3], FUNCTION_WEIGHT / total)
    assert np.unravel_index(second.argmax(), second.shape) == (0, 2)  # "pneumothorax"


def test_mismatched_attention_is_refused() -> None:
    with pytest.raises(ValueError, match="8 tokens"):
        sentence_maps(TOKENS, np.zeros((7, 16), np.float32))
    with pytest.raises(ValueError, match="square grid"):
        sentence_maps(TOKENS, np.zeros((8, 15), np.float32))


def test_letterbox_maps_model_pixels_back_to_the_original() -> None:
    square = Letterbox.fit((2048, 2048), 256)
    assert square.scale == 256 / 2048 and square.pad_x == square.pad_y == 0
    assert square.to_original((32, 64, 96, 128)) == (256, 512, 768, 1024)
    wide = Letterbox.fit((1000, 2000), 200)  # scaled by 0.1, 50 px padding top and bottom
    assert (wide.pad_x, wide.pad_y) == (0.0, 50.0)
    assert wide.to_original((0, 50, 200, 150)) == (0, 0, 2000, 1000)
    assert wide.to_original((0, 0, 10, 40)) == (0, 0, 100, 0)  # padding only: clipped away


def test_boxes_are_components_above_the_threshold_in_original_pixels() -> None:
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[1:3, 1:4] = 1.0  # 6 cells, the larger region
    heatmap[5:7, 6:8] = 0.8  # 4 cells
    heatmap[7, 0] = 0.6  # one stray cell, dropped by min_fraction
    letterbox = Letterbox.fit((1024, 1024), 256)  # 32 model px per cell, x4 to original
    boxes = map_boxes(heatmap, letterbox, threshold=0.5, min_fraction=0.5)
    assert boxes == [(128, 128, 512, 384), (768, 640, 1024, 896)]
    assert map_boxes(heatmap, letterbox, threshold=0.9) == [(128, 128, 512, 384)]
    assert map_boxes(np.zeros((8, 8), np.float32), letterbox) == []


def test_a_phantom_finding_mask_round_trips_to_its_box() -> None:
    from radreport.data.phantoms import generate_study

    study = next(s for s in (generate_study(seed, 512) for seed in range(50))
                 if any(f.kind in ("nodule", "mass") for f in s.findings))
    lesion = next(f for f in study.findings if f.kind in ("nodule", "mass"))
    grid = 32  # 16 px patches of a 512 px model input
    cells = lesion.mask.reshape(grid, 16, grid, 16).mean(axis=(1, 3))
    (box,) = map_boxes(cells, Letterbox.fit(lesion.mask.shape, 512), threshold=0.01)
    x0, y0, x1, y1 = lesion.box
    assert box[0] <= x0 and box[1] <= y0 and box[2] >= x1 and box[3] >= y1
    assert box[2] - box[0] <= (x1 - x0) + 32 and box[3] - box[1] <= (y1 - y0) + 32
