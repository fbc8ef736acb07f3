"""Getting a study's image into the blob store safely: a path or an upload (URLs: fetch.py).

Everything here refuses bad input before a report exists: a path outside the image root
(including through a symlink), a download or upload over the size cap, bytes that are not
DICOM, PNG or JPEG, and a DICOM that is not a chest radiograph or declares too many pixels
(read from its header only, before any pixel is decoded).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.errors import InvalidDicomError

from services.preprocess.imaging import (
    InputRefused,
    check_chest_radiograph,
    declared_pixels,
    dicom_metadata,
    sniff_format,
)

ImageFormat = Literal["dicom", "png", "jpeg"]


class IngestError(Exception):
    """A refusal with its HTTP status; the message is safe to show (no PHI)."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def resolve_image_path(root: Path, image_path: str) -> Path:
    """``image_path`` (relative to the root, or absolute) if it resolves inside the root."""
    if image_path.startswith(("s3://", "gs://", "http://", "https://")):
        raise IngestError(422, "image_path must be a file path; use image_url for URLs",
                          "bad_path")
    if "\x00" in image_path:
        raise IngestError(422, "image_path contains a NUL character", "bad_path")
    base = root.resolve()
    candidate = Path(image_path)
    try:
        target = (candidate if candidate.is_absolute() else base / candidate).resolve()
        inside = target.is_relative_to(base)
        is_file = inside and target.is_file()
    except (OSError, RuntimeError):  # a symlink loop, a name too long for the file system
        raise IngestError(422, "image_path cannot be resolved to a file",
                          "bad_path") from None
    if not inside:  # "..", absolute elsewhere, or a symlink out
        raise IngestError(403, "image_path is outside the configured image root",
                          "path_outside_root")
    if not is_file:
        raise IngestError(404, "image_path does not name a file below the image root",
                          "path_not_found")
    return target


def check_size(size: int, max_bytes: int) -> None:
    """The one size cap of an image, however it arrives (413)."""
    if size > max_bytes:
        raise IngestError(413, f"image is larger than {max_bytes} bytes", "too_large")


def read_capped(path: Path, max_bytes: int) -> bytes:
    check_size(path.stat().st_size, max_bytes)
    return path.read_bytes()


def check_image(data: bytes, max_pixels: int) -> tuple[ImageFormat, dict[str, object]]:
    """The format, and for DICOM its non-PHI header attributes; refuses what we can't use."""
    image_format = sniff_format(data[:132])
    if image_format is None:
        raise IngestError(415, "the file is not DICOM (Part 10), PNG or JPEG", "unsupported_format")
    if image_format != "dicom":
        return image_format, {}
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                             force=data[128:132] != b"DICM")  # a dataset without preamble
    except (InvalidDicomError, ValueError, EOFError, OSError) as err:
        raise IngestError(422, "the DICOM file could not be parsed", "corrupt_dicom") from err
    try:
        metadata = dicom_metadata(ds)
        check_chest_radiograph(metadata)
        pixels = declared_pixels(metadata)
        if pixels > max_pixels:
            raise InputRefused("too_large", f"the image declares {pixels} pixels, more than "
                               f"the limit of {max_pixels}")
    except InputRefused as err:
        status = 413 if err.reason == "too_large" else 422
        raise IngestError(status, str(err), err.reason) from err
    return image_format, metadata
