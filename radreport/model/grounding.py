"""From per-token cross-attention to one grounding map and boxes per sentence.

NumPy and SciPy only: the serving stack calls this after ONNX Runtime decoding, without
torch. A sentence's map is the weighted mean of its tokens' attention, weighted toward the
words that name a finding or a place ("effusion", "left", "lobe") and away from function
words and punctuation, whose attention carries little evidence. Boxes are the connected
components of the map above a fraction of its peak, mapped back through the letterbox that
preprocessing applied, into the original image's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from radreport.data.phantoms.study import Box  # x0, y0, x1, y1 (exclusive), image pixels


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


FINDING_WORDS = _words("""
cardiomegaly enlarged enlargement heart cardiac silhouette mediastinum mediastinal widened
widening effusion effusions pleural pneumothorax nodule mass consolidation pneumonia airspace
opacity opacities atelectasis edema congestion kerley fracture rib ribs tube endotracheal line
catheter pacemaker leads thickening lobe lingula zone base bases apex hemithorax left right
upper lower middle bilateral costophrenic perihilar
""")
STOP_WORDS = _words("""
a an the is are there of in with without at to and or no not seen present noted likely
consistent compatible cm
""")
FINDING_WEIGHT, CONTENT_WEIGHT, FUNCTION_WEIGHT = 3.0, 1.0, 0.1


def token_weight(token: str) -> float:
    word = token.lower()
    if word in FINDING_WORDS:
        return FINDING_WEIGHT
    if not word.isalpha() or word in STOP_WORDS:
        return FUNCTION_WEIGHT
    return CONTENT_WEIGHT


SECTION_HEADERS: frozenset[str] = frozenset({"findings", "impression"})


@dataclass(frozen=True)
class SentenceSpan:
    """Tokens ``[start, end)`` of one sentence, and the report section it belongs to."""

    section: str
    start: int
    end: int


def report_spans(tokens: Sequence[str], section: str = "findings") -> list[SentenceSpan]:
    """The sentences of a generated report, each ending with its full stop.

    Section headers ("IMPRESSION", ":") and line breaks belong to no sentence and switch the
    section; a point between two digits ("3.9 cm") is a decimal point, not a full stop; a
    trailing fragment without a full stop is still a sentence.
    """
    spans: list[SentenceSpan] = []
    start: int | None = None
    i = 0
    while i < len(tokens):
        token = tokens[i]
        header = token.lower() in SECTION_HEADERS and tokens[i + 1 : i + 2] == [":"]
        if header or token.startswith("\n"):
            if start is not None:
                spans.append(SentenceSpan(section, start, i))
                start = None
            if header:
                section = token.lower()
            i += 2 if header else 1
            continue
        if start is None:
            start = i
        if token == "." and not _is_decimal_point(tokens, i):
            spans.append(SentenceSpan(section, start, i + 1))
            start = None
        i += 1
    if start is not None:
        spans.append(SentenceSpan(section, start, len(tokens)))
    return spans


def _is_decimal_point(tokens: Sequence[str], i: int) -> bool:
    return 0 < i < len(tokens) - 1 and tokens[i - 1].isdigit() and tokens[i + 1].isdigit()


def sentence_spans(tokens: Sequence[str]) -> list[tuple[int, int]]:
    """[start, end) token spans of ``report_spans``, without their sections."""
    return [(span.start, span.end) for span in report_spans(tokens)]


def sentence_maps(tokens: Sequence[str], attention: np.ndarray,
                  spans: Sequence[tuple[int, int]] | None = None) -> list[np.ndarray]:
    """One (grid, grid) map per sentence from (T, N) attention over N = grid**2 patches."""
    if attention.ndim != 2 or attention.shape[0] != len(tokens):
        raise ValueError(f"attention of shape {attention.shape} does not match "
                         f"{len(tokens)} tokens")
    grid = round(attention.shape[1] ** 0.5)
    if grid * grid != attention.shape[1]:
        raise ValueError(f"{attention.shape[1]} patches do not form a square grid")
    weights = np.array([token_weight(t) for t in tokens], dtype=np.float64)
    maps = []
    for start, end in sentence_spans(tokens) if spans is None else spans:
        w = weights[start:end]
        combined = (w[:, None] * attention[start:end]).sum(axis=0) / w.sum()
        maps.append(combined.reshape(grid, grid).astype(np.float32))
    return maps


@dataclass(frozen=True)
class Letterbox:
    """How preprocessing placed the original image in the square model input.

    The original (height, width) was scaled by ``scale`` and padded by ``pad_x``/``pad_y``
    model pixels on the left/top to fill ``size`` x ``size``.
    """

    size: int
    scale: float
    pad_x: float
    pad_y: float
    original_shape: tuple[int, int]

    @classmethod
    def fit(cls, original_shape: tuple[int, int], size: int) -> Letterbox:
        """Keep the aspect ratio and centre the image, as preprocessing does."""
        height, width = original_shape
        scale = size / max(height, width)
        return cls(size, scale, (size - width * scale) / 2, (size - height * scale) / 2,
                   (height, width))

    def to_original(self, box: tuple[float, float, float, float]) -> Box:
        """A box in model pixels to original pixels, clipped to the image."""
        height, width = self.original_shape
        x0, y0, x1, y1 = box
        ox0 = int(np.floor((x0 - self.pad_x) / self.scale))
        oy0 = int(np.floor((y0 - self.pad_y) / self.scale))
        ox1 = int(np.ceil((x1 - self.pad_x) / self.scale))
        oy1 = int(np.ceil((y1 - self.pad_y) / self.scale))
        return (min(max(0, ox0), width), min(max(0, oy0), height),
                min(max(0, ox1), width), min(max(0, oy1), height))


def map_boxes(heatmap: np.ndarray, letterbox: Letterbox, threshold: float = 0.5,
              min_fraction: float = 0.1) -> list[Box]:
    """Boxes around the map's regions above ``threshold`` x peak, largest first.

    Components smaller than ``min_fraction`` of the largest are dropped: a sentence points
    at one or a few places, not at every stray patch.
    """
    peak = float(heatmap.max())
    if peak <= 0:
        return []
    labelled, count = ndimage.label(heatmap >= threshold * peak)
    if count == 0:
        return []
    sizes = ndimage.sum_labels(np.ones_like(heatmap), labelled, index=range(1, count + 1))
    cell = letterbox.size / heatmap.shape[0]
    boxes: list[tuple[float, Box]] = []
    for label, found in enumerate(ndimage.find_objects(labelled), start=1):
        if found is None or sizes[label - 1] < min_fraction * sizes.max():
            continue
        rows, cols = found
        model_box = (cols.start * cell, rows.start * cell, cols.stop * cell, rows.stop * cell)
        box = letterbox.to_original(model_box)
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append((float(sizes[label - 1]), box))
    return [box for _, box in sorted(boxes, key=lambda item: -item[0])]


def attention_entropy(heatmap: np.ndarray) -> float:
    """Shannon entropy (bits) of the normalised map: log2(N) uniform, 0 one-hot.

    Rising entropy means vaguer grounding (drift monitoring). Negative values count as 0;
    an all-zero map has entropy 0.
    """
    values = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float64)).ravel(), 0.0, None)
    total = values.sum()
    if total <= 0:
        return 0.0
    p = values[values > 0] / total
    return float(max(0.0, -(p * np.log2(p)).sum()))
