"""Decoding and checking a chest radiograph: DICOM in any transfer syntax we have a codec
for, PNG and JPEG; then the model's square input.

Two images come out of a DICOM. ``pixels`` is what the model was trained on: the Modality
LUT applied, MONOCHROME1 inverted, scaled by the full stored range. ``display`` is what a
radiologist sees: the VOI LUT or first window of the header applied (PS3.3 C.11.2). Sizes
are checked from the header before any pixel is decoded, so a hostile file cannot make us
allocate gigabytes. Messages never carry header text (no PHI), only our own words.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
from skimage.exposure import equalize_adapthist

from radreport.model.grounding import Letterbox
from radreport.model.report import to_model_input
from services.common.schemas import ImageQuality

SourceFormat = Literal["dicom", "png", "jpeg"]
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", ""})
RADIOGRAPH_SOP_CLASSES = frozenset({str(ComputedRadiographyImageStorage),
                                    str(DigitalXRayImageStorageForPresentation),
                                    str(DigitalXRayImageStorageForProcessing)})
MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
# The only attributes copied out of a header: identifiers of images, never of people.
SAFE_ATTRIBUTES = ("Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation",
                   "SOPClassUID", "Rows", "Columns", "BitsStored", "StudyInstanceUID",
                   "SeriesInstanceUID", "SOPInstanceUID", "ImageLaterality", "NumberOfFrames",
                   "SamplesPerPixel")
LOW_CONTRAST = 0.15  # 1st-99th percentile spread below this: washed out or blank
SMALL_SIDE_PX = 256  # below the model's input: upsampled, detail invented


class InputRefused(ValueError):
    """An image we will not report on; ``reason`` is a stable code for metrics and APIs."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class DecodedImage:
    pixels: np.ndarray  # (H, W) float32 in [0, 1], bone bright: the model's view
    display: np.ndarray  # (H, W) float32 in [0, 1]: the window a radiologist sees
    source_format: SourceFormat
    metadata: dict[str, Any] = field(default_factory=dict)
    quality: ImageQuality | None = None


def dicom_metadata(ds: Dataset) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for keyword in SAFE_ATTRIBUTES:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        metadata[keyword] = int(value) if isinstance(value, int) else str(value).strip()
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        metadata["TransferSyntaxUID"] = str(meta.TransferSyntaxUID)
    return metadata


REQUIRED_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "Rows", "Columns")


def check_chest_radiograph(metadata: dict[str, Any]) -> None:
    """Refuse what our model was not made for, with the reason."""
    missing = [k for k in REQUIRED_ATTRIBUTES if k not in metadata]
    if missing:
        raise InputRefused("corrupt_dicom", "the DICOM file is truncated or incomplete: it "
                           f"lacks {', '.join(missing)}")
    modality = str(metadata.get("Modality", "")).upper()
    if modality not in RADIOGRAPH_MODALITIES:
        raise InputRefused("wrong_modality", f"modality {modality or 'missing'} is not a "
                           "radiograph (CR or DX)")
    sop_class = str(metadata.get("SOPClassUID", ""))
    if sop_class and sop_class not in RADIOGRAPH_SOP_CLASSES:
        raise InputRefused("wrong_modality", "the SOP class is not a CR or DX image")
    body_part = str(metadata.get("BodyPartExamined", "")).upper()
    if body_part not in CHEST_BODY_PARTS:
        raise InputRefused("not_chest", f"body part {body_part} is not the chest")
    photometric = str(metadata.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in MONOCHROME:
        raise InputRefused("unsupported_photometric", f"photometric interpretation "
                           f"{photometric} is not grayscale")


def _check_size(pixels: int, max_pixels: int) -> None:
    if pixels > max_pixels:
        raise InputRefused("too_large", f"the image declares {pixels} pixels, more than the "
                           f"limit of {max_pixels}")


def _sniff(head: bytes) -> SourceFormat | None:
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    return None


def load_image(path: Path, *, max_pixels: int = 4096 * 4096) -> DecodedImage:
    data = Path(path).read_bytes()
    source = _sniff(data[:132])
    if source is None:
        raise InputRefused("not_dicom_or_image", "the file is not DICOM (Part 10), PNG or JPEG")
    decoded = (_load_dicom(data, max_pixels) if source == "dicom"
               else _load_picture(data, source, max_pixels))
    decoded.quality = quality_of(decoded.pixels, decoded.metadata.get("BitsStored"))
    return decoded


def _load_dicom(data: bytes, max_pixels: int) -> DecodedImage:
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError) as err:
        raise InputRefused("corrupt_dicom", "the DICOM header could not be parsed") from err
    metadata = dicom_metadata(header)
    check_chest_radiograph(metadata)
    rows, columns = int(metadata.get("Rows", 0)), int(metadata.get("Columns", 0))
    _check_size(rows * columns * int(metadata.get("SamplesPerPixel", 1)), max_pixels)
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        stored = ds.pixel_array
        if stored.ndim == 3:  # multi-frame: the first frame
            stored = stored[0]
        if stored.shape != (rows, columns):
            raise ValueError("pixel data does not match Rows x Columns")
        pixels = _model_view(ds, stored)
        display = _display_view(ds, stored)
    except InputRefused:
        raise
    except Exception as err:  # any codec or truncation error: the pixels are unusable
        raise InputRefused("corrupt_pixel_data", "the DICOM pixel data could not be "
                           "decoded") from err
    return DecodedImage(pixels, display, "dicom", metadata)


def _model_view(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Modality LUT, MONOCHROME1 inverted, scaled by the stored range, as in training."""
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    bits = int(ds.get("BitsStored", 16))
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    top = (2**bits - 1) * slope + intercept
    scaled = (values - intercept) / max(top - intercept, 1e-6)
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _display_view(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """The header's VOI LUT or first window (PS3.3 C.11.2), min-max scaled for display."""
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    shown = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        shown = 1.0 - shown
    return shown.astype(np.float32)


def _load_picture(data: bytes, source: SourceFormat, max_pixels: int) -> DecodedImage:
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            _check_size(width * height, max_pixels)
            image.load()
            if image.mode in ("I;16", "I;16B", "I"):
                values = np.asarray(image, dtype=np.float32)
                pixels = values / (65535.0 if values.max() > 255 else 255.0)
            else:
                pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except InputRefused:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise InputRefused("corrupt_pixel_data", f"the {source.upper()} image could not be "
                           "decoded") from err
    pixels = np.clip(pixels, 0.0, 1.0).astype(np.float32)
    return DecodedImage(pixels, pixels, source, {"Rows": height, "Columns": width})


def quality_of(pixels: np.ndarray, bits_stored: int | None = None) -> ImageQuality:
    height, width = pixels.shape
    low, high = np.percentile(pixels[:: max(1, height // 512), :: max(1, width // 512)],
                              [1, 99])
    spread = float(high - low)
    reasons = []
    if spread < LOW_CONTRAST:
        reasons.append("low_contrast")
    if min(height, width) < SMALL_SIDE_PX:
        reasons.append("small_image")
    return ImageQuality(width=width, height=height, bits_stored=bits_stored,
                        dynamic_range=round(spread, 4), poor_reasons=reasons)


def prepare_for_model(decoded: DecodedImage, size: int,
                      clahe: bool = False) -> tuple[np.ndarray, Letterbox]:
    """Optional CLAHE, then the aspect-keeping, padded square the model takes."""
    pixels = decoded.pixels
    if clahe:
        pixels = equalize_adapthist(pixels, clip_limit=0.01).astype(np.float32)
    return to_model_input(pixels, size)


def intensity_histogram(pixels: np.ndarray, bins: int = 32) -> np.ndarray:
    """Normalised histogram over [0, 1], the input-drift statistic's raw material."""
    counts, _ = np.histogram(pixels, bins=bins, range=(0.0, 1.0))
    return (counts / max(1, counts.sum())).astype(np.float64)
