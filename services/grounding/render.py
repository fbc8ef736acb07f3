"""Overlays drawn when first asked for: full-size PNGs are not on the report's critical path.

The grounding stage writes the previews (what the review page shows first) and the maps;
a full-size overlay is drawn by whoever first needs it (the gateway, the DICOM exporter),
then kept in the blob store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.common.blobs import BlobStore, write_atomic
from services.common.schemas import Draft
from services.grounding.overlays import overlay_png
from services.preprocess.imaging import load_image


def display_image(blobs: BlobStore, report_id: str, source_blob: str,
                  max_pixels: int) -> np.ndarray:
    """The image as radiologists see it: kept by preprocessing, else decoded in full now."""
    if blobs.exists(report_id, "display.npy"):
        return blobs.get_array(report_id, "display.npy").astype(np.float32) / 65535.0
    return load_image(blobs.path(report_id, source_blob), max_pixels=max_pixels).display


def full_overlay(blobs: BlobStore, report_id: str, source_blob: str, index: int,
                 max_pixels: int) -> Path:
    """``overlays/sentence-NN.png``, drawn now if it is not there yet."""
    path = blobs.path(report_id, f"overlays/sentence-{index:02d}.png")
    if path.is_file():
        return path
    draft = Draft.model_validate(blobs.get_json(report_id, "draft.json"))
    if not 0 <= index < len(draft.sentences):
        raise IndexError(index)
    display = display_image(blobs, report_id, source_blob, max_pixels)
    return write_atomic(path, overlay_png(display, draft, index))
