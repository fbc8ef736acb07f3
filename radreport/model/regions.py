"""MS-CXR boxes as training regions: where they land on the model's patch grid, and which
report tokens they ground.

A box is drawn in pixels of the original radiograph. The model sees that radiograph
letterboxed into its square (``images.letterbox``, the served geometry), so a box is mapped
through the same scale and padding, rasterised with partial pixel coverage, and (when
geometric augmentation is on) warped by the same affine as the image before it is
area-averaged onto the patch grid, as phantom masks are (``cache.render_record``).

A phrase grounds the report sentences that contain its words (case-insensitive, on the
tokenizer's words, so line breaks and spacing do not matter): those sentences get the union
of its boxes as their sentence mask and their content words carry the grounding loss. The
phrase's CheXpert label gets the same union as its condition query's mask. A phrase found in
no sentence grounds no tokens and is counted; its query mask still holds.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from radreport.data.datasets.ms_cxr import Box, GroundedImage
from radreport.data.labels import CHEXPERT_LABELS
from radreport.model.cache import MAX_SENTENCES, RecordSpec
from radreport.model.data import area_downsample, is_content_word
from radreport.model.grounding import SentenceSpan, report_spans
from radreport.model.tokenizer import split_words


@dataclass(frozen=True)
class ImageRegions:
    """What one image's MS-CXR phrases add to its training record."""

    source: tuple[int, int]  # (width, height) of the image the boxes were drawn on
    boxes: tuple[tuple[Box, ...], ...]  # per phrase
    queries: tuple[int, ...]  # per phrase: its condition query (label index), -1 if none
    slots: tuple[tuple[int, ...], ...]  # per sentence mask: the phrases it is the union of
    sentence: np.ndarray  # (report_len,) int8: sentence mask per report id, -1 none
    ground: np.ndarray  # (report_len,) bool: content words of grounded sentences
    unmatched: int  # phrases found in no sentence of the report


def letterbox_frame(height: int, width: int, size: int) -> tuple[float, float, int, int]:
    """(x scale, y scale, x pad, y pad): pixel edge (x, y) of a height x width image lies at
    (pad_x + x * sx, pad_y + y * sy) in ``images.letterbox``'s square (same rounding)."""
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return new_w / width, new_h / height, (size - new_w) // 2, (size - new_h) // 2


def _coverage(start: float, stop: float, size: int) -> np.ndarray:
    """Fraction of each of ``size`` unit pixels inside [start, stop)."""
    edges = np.arange(size, dtype=np.float64)
    return np.clip(np.minimum(stop, edges + 1) - np.maximum(start, edges), 0.0, 1.0)


def box_mask(boxes: Sequence[Box], source: tuple[int, int], shape: tuple[int, int],
             size: int) -> np.ndarray:
    """(size, size) float32 in [0, 1]: how much of each model-input pixel the boxes cover.

    ``source`` is (width, height) of the image the boxes were drawn on, ``shape`` (height,
    width) of the image read, a resize of it (a box keeps its fraction of each side)."""
    height, width = shape
    sx, sy, pad_x, pad_y = letterbox_frame(height, width, size)
    fx, fy = width / source[0], height / source[1]
    mask = np.zeros((size, size), np.float64)
    for b in boxes:
        cols = _coverage(pad_x + b.x * fx * sx, pad_x + (b.x + b.w) * fx * sx, size)
        rows = _coverage(pad_y + b.y * fy * sy, pad_y + (b.y + b.h) * fy * sy, size)
        mask = np.maximum(mask, np.outer(rows, cols))
    return mask.astype(np.float32)


def grid_u8(mask: np.ndarray, grid: int) -> np.ndarray:
    """(grid * grid,) uint8: a mask's area fraction per patch, as phantom records store it."""
    return np.round(area_downsample(mask, grid).flatten().numpy() * 255).astype(np.uint8)


def report_words(text: str) -> list[str]:
    """The tokenizer's words of ``text`` (normalised, lower-cased): one per token id."""
    return split_words(unicodedata.normalize("NFKC", text).lower())


def _contains(words: Sequence[str], phrase: Sequence[str]) -> bool:
    n = len(phrase)
    return n > 0 and any(list(words[i : i + n]) == list(phrase)
                         for i in range(len(words) - n + 1))


def phrase_spans(words: Sequence[str], phrase: str) -> list[int]:
    """Indices of the sentences (``report_spans`` of ``words``) holding the phrase's words."""
    target = report_words(phrase)
    return [k for k, s in enumerate(report_spans(words))
            if _contains(words[s.start : s.end], target)]


def image_regions(image: GroundedImage, text: str, report_len: int) -> ImageRegions:
    """The regions of one image whose report ids are ``[BOS] words(text) [EOS]``, padded or
    cut to ``report_len``."""
    words = report_words(text)
    spans = report_spans(words)
    by_span: dict[int, list[int]] = {}
    unmatched = 0
    for p, phrase in enumerate(image.phrases):
        found = phrase_spans(words, phrase.text)
        unmatched += not found
        for k in found:
            by_span.setdefault(k, []).append(p)
    sentence = np.full(report_len, -1, np.int8)
    ground = np.zeros(report_len, bool)
    kept = sorted(by_span)[:MAX_SENTENCES]
    for slot, k in enumerate(kept):
        for t in range(spans[k].start, min(spans[k].end, report_len - 1)):
            sentence[t + 1] = slot  # position 0 is [BOS]
            ground[t + 1] = is_content_word(words[t])
    queries = tuple(CHEXPERT_LABELS.index(p.label) if p.label else -1 for p in image.phrases)
    return ImageRegions((image.width, image.height), tuple(p.boxes for p in image.phrases),
                        queries, tuple(tuple(by_span[k]) for k in kept), sentence, ground,
                        unmatched)


def phrase_masks(regions: ImageRegions, shape: tuple[int, int], size: int) -> np.ndarray:
    """(phrases, size, size) float32: each phrase's boxes in the model's square."""
    return np.stack([box_mask(b, regions.source, shape, size) for b in regions.boxes])


def region_fields(regions: ImageRegions, masks: np.ndarray,
                  spec: RecordSpec) -> dict[str, np.ndarray]:
    """The record fields (``cache.RecordSpec``) the regions fill, from ``phrase_masks``
    (warped as the image was, if it was)."""
    n = spec.grid * spec.grid
    sentence_masks = np.zeros((MAX_SENTENCES, n), np.uint8)
    for slot, phrases in enumerate(regions.slots):
        sentence_masks[slot] = grid_u8(masks[list(phrases)].max(axis=0), spec.grid)
    query_masks = np.zeros((spec.n_queries, n), np.uint8)
    for q in sorted(set(regions.queries) - {-1}):
        if q < spec.n_queries:
            same = [p for p, label in enumerate(regions.queries) if label == q]
            query_masks[q] = grid_u8(masks[same].max(axis=0), spec.grid)
    return {"sentence": regions.sentence, "ground": regions.ground,
            "sentence_masks": sentence_masks, "query_masks": query_masks}


def reference_spans(text: str) -> list[SentenceSpan]:
    """The sentences of a reference report, as ``phrase_spans`` numbers them."""
    return report_spans(report_words(text))
