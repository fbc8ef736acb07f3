"""Grounding overlays: each sentence's heatmap and boxes drawn on the original image.

The model grounds a sentence on a (grid, grid) map over its square, letterboxed input. To
show it on the image a radiologist reads, the map is interpolated over the model input, the
letterbox padding cut away, and the rest resampled to the original pixels; boxes are
already in original pixels. Only the sentence text is drawn on the image, never patient
data. Pure functions: no settings, no queue; the grounding task calls them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from radreport.model.grounding import Letterbox, attention_entropy
from services.common.blobs import write_atomic
from services.common.schemas import BoundingBox, Draft

COLORMAP = "inferno"
PNG_COMPRESS_LEVEL = 1
MAX_ALPHA = 0.6  # opacity of the colour at the hottest point; zero heat stays transparent
BOX_COLOUR = (0, 255, 128)  # not in the colour map, so a box never reads as heat
TEXT_COLOUR = (255, 255, 255)
FONT_FRACTION = 1 / 45  # legend font size per pixel of the image's longest side
MIN_FONT_PX = 11
CAPTION_LINES = 2
MAX_CAPTION_CHARS = 600  # a sentence; longer text is cut before wrapping

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class OverlayFiles:
    """The PNGs of one sentence: full size (with legend) and a preview."""

    index: int
    full: Path
    preview: Path


def _bilinear_weights(n_out: int, start: float, step: float, n_grid: int) -> np.ndarray:
    """(n_out, n_grid) weights of linear interpolation between cell centres along one axis.

    Output pixel ``i`` has its centre at ``start + (i + 0.5) * step`` in grid units (cell
    ``j`` spans ``[j, j + 1)``, its centre at ``j + 0.5``); beyond the outer centres the
    edge value holds, as in image resizing.
    """
    position = np.clip(start + (np.arange(n_out) + 0.5) * step - 0.5, 0.0, n_grid - 1.0)
    weights = np.zeros((n_out, n_grid), dtype=np.float64)
    if n_grid == 1:
        weights[:, 0] = 1.0
        return weights
    left = np.minimum(np.floor(position).astype(np.int64), n_grid - 2)
    frac = position - left
    rows = np.arange(n_out)
    weights[rows, left] = 1.0 - frac
    weights[rows, left + 1] = frac
    return weights


def heatmap_on_original(heatmap: np.ndarray, letterbox: Letterbox) -> np.ndarray:
    """The (grid, grid) map over the model input on the original (H, W) pixels, peak 1.

    Bilinear between cell centres, as if upsampled to the model input, but evaluated
    directly at the centre of each original pixel: cell ``(r, c)`` covers model pixels
    ``[c*cell, (c+1)*cell) x [r*cell, (r+1)*cell)`` (the cell ``map_boxes`` turns into a
    box) and original pixel ``x`` sits at model ``pad_x + (x + 0.5) * scale``. The letterbox
    padding is thereby cut away. An all-zero map (or one whose heat is all in the padding)
    stays zero.
    """
    grid = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    if grid.ndim != 2 or grid.shape[0] != grid.shape[1] or grid.shape[0] == 0:
        raise ValueError(f"heatmap of shape {grid.shape} is not a square grid")
    cell = letterbox.size / grid.shape[0]  # model pixels per grid cell
    height, width = letterbox.original_shape
    step = letterbox.scale / cell  # grid cells per original pixel
    rows = _bilinear_weights(height, letterbox.pad_y / cell, step, grid.shape[0])
    cols = _bilinear_weights(width, letterbox.pad_x / cell, step, grid.shape[1])
    on_original = np.clip(rows @ grid @ cols.T, 0.0, None).astype(np.float32)  # (H, W)
    peak = float(on_original.max())
    return on_original / peak if peak > 0 else on_original


def render_overlay(display: np.ndarray, heatmap: np.ndarray, letterbox: Letterbox,
                   boxes: list[BoundingBox], caption: str | None = None,
                   max_side: int | None = None) -> Image.Image:
    """RGB: the grayscale image with the heat in colour, the boxes, a legend strip below.

    ``display`` is (H, W) in [0, 1], the original image as windowed for reading. The colour's
    opacity follows the heat, so cold regions keep their gray values exactly. ``max_side``
    shrinks the result (legend included) so its longest side is at most that.
    """
    gray = np.clip(np.nan_to_num(np.asarray(display, dtype=np.float32)), 0.0, 1.0)
    if gray.shape != tuple(letterbox.original_shape):
        raise ValueError(f"display image of shape {gray.shape} does not match the "
                         f"letterbox's original shape {tuple(letterbox.original_shape)}")
    heat = heatmap_on_original(heatmap, letterbox)
    colours = matplotlib.colormaps[COLORMAP](heat)[..., :3].astype(np.float32)
    alpha = (MAX_ALPHA * heat)[..., None]
    blended = (1.0 - alpha) * gray[..., None] + alpha * colours
    image = Image.fromarray(np.round(blended * 255).astype(np.uint8))
    height, width = gray.shape
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(height, width) / 300))
    for x0, y0, x1, y1 in boxes:  # x1, y1 exclusive; the outline is drawn inside the box
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=BOX_COLOUR,
                       width=line)
    out = _with_legend(image, caption)
    return out if max_side is None else _fit(out, max_side)


def _fit(image: Image.Image, max_side: int) -> Image.Image:
    """Shrunk so the longest side is ``max_side``; never enlarged."""
    if max_side < 1:
        raise ValueError(f"max_side must be positive, not {max_side}")
    longest = max(image.size)
    if longest <= max_side:
        return image
    size = (max(1, round(image.width * max_side / longest)),
            max(1, round(image.height * max_side / longest)))
    if max(size) != max_side:  # rounding: keep the promised longest side exactly
        size = (max_side, size[1]) if image.width >= image.height else (size[0], max_side)
    return image.resize(size, Image.Resampling.LANCZOS)


def _line_height(draw: ImageDraw.ImageDraw, font: _Font) -> int:
    bottom = draw.textbbox((0, 0), "Ag", font=font)[3]
    return int(bottom) + 2


def _caption_lines(draw: ImageDraw.ImageDraw, text: str, font: _Font, width: float,
                   max_lines: int) -> list[str]:
    """Greedy word wrap measured in pixels; the last line ends in '...' if text was cut."""
    def fits(line: str) -> bool:
        return draw.textlength(line, font=font) <= width

    lines: list[str] = []
    for word in text[:MAX_CAPTION_CHARS].split():
        pieces = []
        while len(word) > 1 and not fits(word):  # a word wider than the line is broken
            cut = len(word) - 1
            while cut > 1 and not fits(word[:cut]):
                cut -= 1
            pieces.append(word[:cut])
            word = word[cut:]
        for piece in [*pieces, word]:
            if lines and fits(f"{lines[-1]} {piece}"):
                lines[-1] = f"{lines[-1]} {piece}"
            else:
                lines.append(piece)
        if len(lines) > max_lines:
            break
    if len(lines) > max_lines or len(text) > MAX_CAPTION_CHARS:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and not fits(last + "..."):
            last = last[:-1]
        lines[-1] = last.rstrip() + "..."
    return lines


def _with_legend(image: Image.Image, caption: str | None) -> Image.Image:
    """A black strip under the image: colour bar (low to high heat), then the sentence."""
    width, height = image.size
    font_px = max(MIN_FONT_PX, round(max(width, height) * FONT_FRACTION))
    font: _Font = ImageFont.load_default(size=font_px)
    probe = ImageDraw.Draw(image)
    line_h = _line_height(probe, font)
    margin = max(4, font_px // 2)
    labels_w = probe.textlength("low", font=font) + probe.textlength("high", font=font)
    bar_w = max(width // 6, round(labels_w + font_px))
    bar_h = max(4, font_px // 2)
    strip = 2 * margin + max(bar_h + 2 + line_h, CAPTION_LINES * line_h)
    out = Image.new("RGB", (width, height + strip), (0, 0, 0))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    top = height + margin
    ramp = matplotlib.colormaps[COLORMAP](np.linspace(0.0, 1.0, bar_w))[:, :3]
    bar = np.repeat(np.round(ramp[None] * 255).astype(np.uint8), bar_h, axis=0)
    out.paste(Image.fromarray(bar), (margin, top))
    labels_y = top + bar_h + 2
    draw.text((margin, labels_y), "low", fill=TEXT_COLOUR, font=font)
    high_x = margin + bar_w - draw.textlength("high", font=font)
    draw.text((high_x, labels_y), "high", fill=TEXT_COLOUR, font=font)
    text_x = 2 * margin + bar_w + font_px
    if caption and text_x < width - margin:
        lines = _caption_lines(draw, caption, font, width - margin - text_x, CAPTION_LINES)
        for i, text in enumerate(lines):
            draw.text((text_x, top + i * line_h), text, fill=TEXT_COLOUR, font=font)
    return out


def _png_bytes(image: Image.Image) -> bytes:
    """Fast zlib level: the default (6) spent 130 ms per 1,024 px overlay, level 1 a few ms,
    for files about a third larger."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def shrunk(display: np.ndarray, letterbox: Letterbox, boxes: list[BoundingBox],
           max_side: int) -> tuple[np.ndarray, Letterbox, list[BoundingBox]]:
    """The display image at most ``max_side`` long, with its letterbox and boxes to match,
    so a preview is drawn small instead of drawn large and shrunk (4x-16x fewer pixels)."""
    height, width = display.shape
    factor = max_side / max(height, width)
    if factor >= 1:
        return display, letterbox, boxes
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    small = np.asarray(Image.fromarray(np.asarray(display, dtype=np.float32), mode="F").resize(
        (new_w, new_h), Image.Resampling.BOX), dtype=np.float32)
    fx, fy = new_w / width, new_h / height
    small_box = Letterbox(letterbox.size, letterbox.scale / fx, letterbox.pad_x,
                          letterbox.pad_y, (new_h, new_w))
    return small, small_box, scaled_boxes(boxes, fx, fy)


def scaled_boxes(boxes: list[BoundingBox], fx: float, fy: float) -> list[BoundingBox]:
    return [(int(x0 * fx), int(y0 * fy), max(int(x0 * fx) + 1, round(x1 * fx)),
             max(int(y0 * fy) + 1, round(y1 * fy))) for x0, y0, x1, y1 in boxes]


def overlay_png(display: np.ndarray, draft: Draft, index: int,
                max_side: int | None = None) -> bytes:
    """One sentence's overlay as PNG bytes, full size or drawn small for a preview."""
    return _overlay(display, draft.letterbox.to_letterbox(), draft, index, max_side)


def _overlay(display: np.ndarray, letterbox: Letterbox, draft: Draft, index: int,
             max_side: int | None) -> bytes:
    sentence = draft.sentences[index]
    boxes = list(sentence.boxes)
    if max_side is not None:
        display, letterbox, boxes = shrunk(display, letterbox, boxes, max_side)
    image = render_overlay(display, np.asarray(sentence.heatmap, dtype=np.float32), letterbox,
                           boxes, sentence.text)
    return _png_bytes(image if max_side is None else _fit(image, max_side))


def write_overlays(display: np.ndarray, draft: Draft, out_dir: Path,
                   preview_side: int = 512, full: bool = True) -> list[OverlayFiles]:
    """Preview PNG per sentence (``sentence-NN.preview.png``), and the full-size one
    (``sentence-NN.png``) unless ``full`` is False: then it is drawn when first asked for.

    Each file is written atomically (temporary file in ``out_dir``, fsync, rename), so a
    reader never sees half a PNG and a redelivered task just writes the same files again.
    The preview's longest side is ``preview_side`` (smaller overlays are not enlarged).
    """
    files = []
    letterbox = draft.letterbox.to_letterbox()
    small, small_box, _ = shrunk(display, letterbox, [], preview_side)  # once, not per sentence
    fx, fy = small.shape[1] / display.shape[1], small.shape[0] / display.shape[0]
    small_draft = draft.model_copy(update={"sentences": [
        s.model_copy(update={"boxes": scaled_boxes(list(s.boxes), fx, fy)})
        for s in draft.sentences]})
    for i in range(len(draft.sentences)):
        full_path = out_dir / f"sentence-{i:02d}.png"
        preview = out_dir / f"sentence-{i:02d}.preview.png"
        write_atomic(preview, _overlay(small, small_box, small_draft, i, preview_side))
        if full:
            write_atomic(full_path, overlay_png(display, draft, i))
        files.append(OverlayFiles(i, full_path, preview))
    return files


def compact_maps(draft: Draft, digits: int = 3) -> dict[str, Any]:
    """What ``GET /reports/{id}/grounding`` returns: maps over the model input, rounded.

    Sentences in report order; boxes in original pixels, heatmaps over the letterboxed model
    input (``letterbox`` says where the image sits in it).
    """
    grid = len(draft.sentences[0].heatmap) if draft.sentences else 0
    return {
        "grid": grid, "model_version": draft.model_version,
        "letterbox": draft.letterbox.model_dump(mode="json"),
        "sentences": [{"index": i, "text": s.text, "section": s.section,
                       "boxes": [list(b) for b in s.boxes], "labels": list(s.labels),
                       "entropy_bits": round(attention_entropy(np.asarray(s.heatmap)), 3),
                       "heatmap": np.round(np.asarray(s.heatmap, dtype=np.float64),
                                           digits).tolist()}
                      for i, s in enumerate(draft.sentences)],
    }
