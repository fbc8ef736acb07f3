"""Grounding overlays: each sentence's heatmap and boxes drawn on the original image.

The model grounds a sentence on a (grid, grid) map over its square, letterboxed input. To
show it on the image a radiologist reads, the map is upsampled to the model input, the
letterbox padding cut away, and the rest resized to the original pixels; boxes are already
in original pixels. Only the sentence text is drawn on the image, never patient data.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from radreport.model.grounding import Letterbox
from services.common.schemas import Draft, LetterboxInfo

COLORMAP = "inferno"
LEGEND_HEIGHT_FRACTION = 0.09
MAX_ALPHA = 0.6  # at the hottest point; cold regions stay transparent


@dataclass(frozen=True)
class OverlayFiles:
    index: int
    full: Path
    preview: Path


def letterbox_of(info: LetterboxInfo) -> Letterbox:
    height, width = info.original_shape
    return Letterbox(info.size, info.scale, info.pad_x, info.pad_y, (height, width))


def heatmap_on_original(heatmap: np.ndarray, letterbox: Letterbox) -> np.ndarray:
    """The map resampled to the original (H, W) image, peak 1 (an all-zero map stays 0)."""
    size = letterbox.size
    grid = np.asarray(heatmap, dtype=np.float32)
    on_input = np.asarray(Image.fromarray(grid, mode="F").resize(
        (size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    height, width = letterbox.original_shape
    x0, y0 = letterbox.pad_x, letterbox.pad_y
    x1, y1 = x0 + width * letterbox.scale, y0 + height * letterbox.scale
    crop = Image.fromarray(on_input, mode="F").resize(
        (width, height), Image.Resampling.BILINEAR, box=(x0, y0, x1, y1))
    on_original = np.clip(np.asarray(crop, dtype=np.float32), 0.0, None)
    peak = float(on_original.max())
    return on_original / peak if peak > 0 else on_original


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(10, size))


def render_overlay(display: np.ndarray, heatmap: np.ndarray, letterbox: Letterbox,
                   boxes: list[tuple[int, int, int, int]], caption: str | None = None,
                   max_side: int | None = None) -> Image.Image:
    """The grayscale image with the heat in colour, the boxes, and a legend strip below."""
    gray = np.clip(np.asarray(display, dtype=np.float32), 0.0, 1.0)
    heat = heatmap_on_original(heatmap, letterbox)
    colours = matplotlib.colormaps[COLORMAP](heat)[..., :3].astype(np.float32)
    alpha = (MAX_ALPHA * heat)[..., None]
    blended = (1.0 - alpha) * gray[..., None] + alpha * colours
    image = Image.fromarray(np.round(blended * 255).astype(np.uint8), mode="RGB")
    height, width = gray.shape
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(height, width) / 300))
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=(0, 255, 128),
                       width=line)
    image = _with_legend(image, caption)
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    return image


def _with_legend(image: Image.Image, caption: str | None) -> Image.Image:
    """A strip under the image: colour bar from low to high heat, then the sentence."""
    width = image.width
    strip = max(36, round(image.height * LEGEND_HEIGHT_FRACTION))
    out = Image.new("RGB", (width, image.height + strip), (0, 0, 0))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    font = _font(strip // 3)
    bar_width = max(40, width // 5)
    ramp = matplotlib.colormaps[COLORMAP](np.linspace(0, 1, bar_width))[:, :3]
    bar = np.repeat((ramp[None] * 255).astype(np.uint8), strip // 3, axis=0)
    top = image.height + strip // 6
    out.paste(Image.fromarray(bar, mode="RGB"), (8, top))
    draw.text((8, top + strip // 3 + 1), "low", fill=(255, 255, 255), font=font)
    draw.text((8 + bar_width, top + strip // 3 + 1), "high", fill=(255, 255, 255), font=font,
              anchor="ra")
    if caption:
        chars = max(10, (width - bar_width - 32) // max(6, strip // 5))
        text = textwrap.shorten(caption, width=chars * 2, placeholder="...")
        lines = textwrap.wrap(text, chars)[:2]
        draw.multiline_text((bar_width + 24, top), "\n".join(lines), fill=(255, 255, 255),
                            font=font)
    return out


def _save_png(image: Image.Image, path: Path) -> None:
    """Atomic: readers never see half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG", optimize=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_overlays(display: np.ndarray, draft: Draft, out_dir: Path,
                   preview_side: int = 512) -> list[OverlayFiles]:
    """Full-size and preview PNG per sentence: ``sentence-NN.png``, ``sentence-NN.preview.png``."""
    letterbox = letterbox_of(draft.letterbox)
    files = []
    for i, sentence in enumerate(draft.sentences):
        image = render_overlay(display, np.asarray(sentence.heatmap, dtype=np.float32),
                               letterbox, list(sentence.boxes), sentence.text)
        full, preview = out_dir / f"sentence-{i:02d}.png", out_dir / f"sentence-{i:02d}.preview.png"
        _save_png(image, full)
        scale = preview_side / max(image.size)
        _save_png(image.resize((max(1, round(image.width * scale)),
                                max(1, round(image.height * scale))),
                               Image.Resampling.LANCZOS) if scale < 1 else image, preview)
        files.append(OverlayFiles(i, full, preview))
    return files


def attention_entropy(heatmap: np.ndarray) -> float:
    """Shannon entropy (bits) of the normalised map; rising entropy = vaguer grounding."""
    values = np.asarray(heatmap, dtype=np.float64).ravel()
    total = values.sum()
    if total <= 0:
        return 0.0
    p = values[values > 0] / total
    return float(-(p * np.log2(p)).sum())


def compact_maps(draft: Draft, digits: int = 3) -> dict[str, Any]:
    """What ``GET /reports/{id}/grounding`` returns: maps over the model input, rounded."""
    grid = len(draft.sentences[0].heatmap) if draft.sentences else 0
    return {
        "grid": grid, "model_version": draft.model_version,
        "letterbox": draft.letterbox.model_dump(),
        "sentences": [{"index": i, "text": s.text, "section": s.section,
                       "boxes": [list(b) for b in s.boxes], "labels": s.labels,
                       "entropy_bits": round(attention_entropy(np.asarray(s.heatmap)), 3),
                       "heatmap": np.round(np.asarray(s.heatmap, dtype=np.float64),
                                           digits).tolist()}
                      for i, s in enumerate(draft.sentences)],
    }
