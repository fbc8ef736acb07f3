"""Grounding products drawn when first asked for, then kept in the blob store.

The grounding stage runs after a report is completed and precomputes the previews and the
maps; whoever needs a product first (the gateway, the DICOM exporter) draws it if that
stage has not yet, or never will (full-size overlays are only drawn on request).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from services.common.blobs import BlobStore, write_atomic
from services.common.schemas import Draft
from services.grounding.overlays import compact_maps, overlay_png
from services.preprocess.imaging import load_image

PREVIEW_SIDE = 512


def display_image(blobs: BlobStore, report_id: str, source_blob: str,
                  max_pixels: int) -> np.ndarray:
    """The image as radiologists see it: kept by preprocessing, else decoded in full now."""
    if blobs.exists(report_id, "display.npy"):
        return blobs.get_unit_image(report_id, "display.npy")
    return load_image(blobs.path(report_id, source_blob), max_pixels=max_pixels).display


def overlay(blobs: BlobStore, report_id: str, source_blob: str, index: int,
            max_pixels: int, preview: bool = False) -> Path:
    """``overlays/sentence-NN[.preview].png``, drawn now if it is not there yet."""
    suffix = ".preview.png" if preview else ".png"
    path = blobs.path(report_id, f"overlays/sentence-{index:02d}{suffix}")
    if path.is_file():
        return path
    draft = Draft.model_validate(blobs.get_json(report_id, "draft.json"))
    if not 0 <= index < len(draft.sentences):
        raise IndexError(index)
    display = display_image(blobs, report_id, source_blob, max_pixels)
    return write_atomic(path, overlay_png(display, draft, index,
                                          PREVIEW_SIDE if preview else None))


def grounding_maps(blobs: BlobStore, report_id: str) -> dict[str, Any]:
    if blobs.exists(report_id, "grounding.json"):
        return dict(blobs.get_json(report_id, "grounding.json"))
    return compact_maps(Draft.model_validate(blobs.get_json(report_id, "draft.json")))


def plain_image(blobs: BlobStore, report_id: str, source_blob: str, max_pixels: int,
                preview: bool) -> Path:
    """The study image without heat, as the reviewer first sees it (PNG, kept once drawn)."""
    name = "image.preview.png" if preview else "image.png"
    path = blobs.path(report_id, name)
    if path.is_file():
        return path
    display = display_image(blobs, report_id, source_blob, max_pixels)
    image = Image.fromarray(np.round(np.clip(display, 0, 1) * 255).astype(np.uint8))
    if preview and max(image.size) > PREVIEW_SIDE:
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return write_atomic(path, buffer.getvalue())
