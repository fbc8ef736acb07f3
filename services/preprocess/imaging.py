"""Decoding and checking a chest radiograph: DICOM in every transfer syntax we have a codec
for, PNG and JPEG; then the model's square input. Pure functions: no Celery, no settings.

Two images come out of a DICOM. ``pixels`` is what the model was trained on: the Modality
LUT applied, MONOCHROME1 inverted, scaled by the full range of the stored values, so a
phantom DICOM decodes to its phantom PNG. ``display`` is what a radiologist sees: the first
VOI LUT or window of the header applied (PS3.3 C.11.2).

Everything here reads untrusted files. Sizes are checked before anything is allocated: the
file's bytes, a deflated dataset's inflated bytes, Rows x Columns x frames from the header,
and the size a compressed frame's own codestream declares (codecs allocate what the
codestream says, not what the header says). Messages never carry header text (no PHI): only
our own words, numbers, UIDs and values from closed DICOM vocabularies.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLETransferSyntaxes,
)
from pydicom.valuerep import VR
from skimage.exposure import equalize_adapthist

from radreport.data.pictures import DECODE_ERRORS, SIXTEEN_BIT_MODES, grayscale_pixels
from radreport.model.drift_reference import (  # re-exported: drift.py, tasks.py
    intensity_histogram as intensity_histogram,
)
from radreport.model.grounding import Letterbox
from radreport.model.report import to_model_input
from services.common.deflate import inflated_size
from services.common.schemas import ImageQuality

log = logging.getLogger(__name__)

SourceFormat = Literal["dicom", "png", "jpeg"]

# --- limits and thresholds -----------------------------------------------------------------
DEFAULT_MAX_PIXELS: Final = 4096 * 4096
# 4096^2 samples at 32 bits allocated is 64 MiB; the rest is room for large headers (private
# tags, overlays, icons). Also bounds what a deflated dataset may inflate to.
DEFAULT_MAX_BYTES: Final = 256 * 2**20
LOW_CONTRAST: Final = 0.15  # 1st-99th percentile spread below this: washed out or blank
SMALL_SIDE_PX: Final = 384  # below: upsampled over 1.33x to the 512 px input, detail invented
QUALITY_SAMPLE_SIDE: Final = 512  # percentiles on a strided sample: same answer, ~16x faster
CLAHE_CLIP_LIMIT: Final = 0.01  # scikit-image's default; higher amplifies noise in the lungs
# What objectively cannot be a radiograph is refused, not reported (the OOD gate flags the
# rest): a side under 256 px, a bit depth outside the DX Image Module's 6 to 16 (PS3.3
# C.8.11.7), no contrast at all (98% of it within one 8-bit grey level), colour.
MIN_SIDE_PX: Final = 256
BITS_STORED_RANGE: Final = (6, 16)
BLANK_SPREAD: Final = 1 / 255
COLOUR_LEVELS: Final = 16  # channels this many 8-bit levels apart ...
COLOUR_SHARE: Final = 0.01  # ... on more than this share of pixels: a colour picture

# --- what we accept ------------------------------------------------------------------------
RADIOGRAPH_MODALITIES: Final = frozenset({"CR", "DX"})
# Empty is tolerated: Body Part Examined is Type 2 (PS3.3 C.7.3.1) and often left blank.
CHEST_BODY_PARTS: Final = frozenset({"CHEST", "THORAX", "LUNG", ""})
# Secondary Capture is refused although some sites send digitised films as SC: it promises
# nothing about acquisition, it is how AI products (ours included, services/dicom/results.py,
# which copies the source's Modality and body part) send overlays back to the PACS, and
# accepting it would let a PACS that forwards everything feed our own output back to us.
# DX For Processing is accepted as asked but flagged for review (see FOR_PROCESSING below).
RADIOGRAPH_SOP_CLASSES: Final = frozenset({str(ComputedRadiographyImageStorage),
                                           str(DigitalXRayImageStorageForPresentation),
                                           str(DigitalXRayImageStorageForProcessing)})
MONOCHROME: Final = frozenset({"MONOCHROME1", "MONOCHROME2"})
# Unprocessed detector data (PS3.3 C.8.11.1.1.1): not the processed images the model was
# trained on, so the report needs a radiologist's look.
FOR_PROCESSING: Final = "for_processing"
# Identifiers must be there before anything else is judged: without them the header was cut.
REQUIRED_IDENTIFIERS: Final = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")
REQUIRED_IMAGE_ATTRIBUTES: Final = ("PhotometricInterpretation", "Rows", "Columns")

# The only attributes copied out of a header: identifiers of images, never of people.
SAFE_ATTRIBUTES: Final = (
    "Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation", "SOPClassUID",
    "Rows", "Columns", "BitsStored", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "ImageLaterality", "NumberOfFrames", "SamplesPerPixel", "PresentationIntentType",
    "LossyImageCompression")

# Closed vocabularies whose values may appear in messages: anything else in those attributes
# could be free text typed at the modality, so it is never echoed.
_KNOWN_MODALITIES: Final = frozenset({  # PS3.3 C.7.3.1.1.1, the common ones
    "CR", "DX", "CT", "MR", "US", "NM", "PT", "XA", "RF", "MG", "IO", "PX", "OT", "SR", "DOC",
    "KO", "PR", "SEG", "SM", "XC", "ES", "OP", "OPT", "OCT", "ECG", "BMD", "RG", "RTIMAGE"})
_KNOWN_PHOTOMETRICS: Final = frozenset({  # PS3.3 C.7.6.3.1.2
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422",
    "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB", "HSV", "ARGB", "CMYK", "YBR_PARTIAL_422"})
_UID_PATTERN: Final = re.compile(r"^[0-9]+(\.[0-9]+)*$")

_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC: Final = b"\xff\xd8\xff"
_EXPLICIT_VRS: Final = frozenset(v.value.encode() for v in VR if len(v.value) == 2)
# PS3.5 7.1.2: explicit VRs with a 4-byte length after 2 reserved bytes.
_LONG_VRS: Final = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC",
                              b"UN", b"UR", b"UT", b"UV"})
_FATAL: Final = (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)


class InputRefused(ValueError):
    """An image we will not report on.

    ``reason`` is a stable code for metrics and APIs: not_dicom_or_image, corrupt_dicom (the
    header is cut or unreadable), corrupt_pixel_data, too_large, too_small, wrong_modality,
    not_chest, unsupported_sop_class, unsupported_photometric, unsupported_transfer_syntax,
    unsupported_bit_depth, non_finite_pixels, blank_image, colour_image. The message is for
    people and carries no PHI.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class DecodedImage:
    """One decoded radiograph: the model's view, the radiologist's view, and what we know."""

    pixels: np.ndarray  # (H, W) float32 in [0, 1], bone bright: the model's view
    display: np.ndarray  # (H, W) float32 in [0, 1]: the header's window, for people
    source_format: SourceFormat
    quality: ImageQuality
    metadata: dict[str, Any] = field(default_factory=dict)  # SAFE_ATTRIBUTES only
    original_shape: tuple[int, int] | None = None  # set when decoded at a reduced resolution

    @property
    def reduced(self) -> bool:
        return self.original_shape is not None and self.original_shape != self.pixels.shape


# --- header checks ---------------------------------------------------------------------------


def dicom_metadata(ds: Dataset) -> dict[str, Any]:
    """The non-PHI attributes of ``ds`` (SAFE_ATTRIBUTES) and its transfer syntax."""
    metadata: dict[str, Any] = {}
    for keyword in SAFE_ATTRIBUTES:
        try:
            value = ds.get(keyword)
        except Exception:  # a value that does not parse is as good as absent
            continue
        if value is None or value == "":
            continue
        metadata[keyword] = int(value) if isinstance(value, int) else str(value).strip()
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        metadata["TransferSyntaxUID"] = str(meta.TransferSyntaxUID)
    return metadata


def check_chest_radiograph(metadata: Mapping[str, Any]) -> None:
    """Refuse what our model was not made for (``dicom_metadata``'s output), with the reason.

    PNG and JPEG have no header to check; only DICOM goes through here.
    """
    _require(metadata, REQUIRED_IDENTIFIERS)
    modality = str(metadata.get("Modality", "")).upper()
    if modality not in RADIOGRAPH_MODALITIES:
        said = _closed_term("modality", modality, _KNOWN_MODALITIES)
        raise InputRefused("wrong_modality", f"{said} is not a radiograph (CR or DX)")
    sop_class = str(metadata["SOPClassUID"])
    if sop_class not in RADIOGRAPH_SOP_CLASSES:
        said = "the SOP class"
        if _UID_PATTERN.match(sop_class):
            name = UID(sop_class).name
            said = f"SOP class {sop_class}" + (f" ({name})" if name != sop_class else "")
        raise InputRefused("unsupported_sop_class", f"{said} is not CR Image or Digital X-Ray "
                           "Image Storage")
    body_part = str(metadata.get("BodyPartExamined", "")).upper()
    if body_part not in CHEST_BODY_PARTS:
        raise InputRefused("not_chest", "the body part examined is not the chest")
    # Image Pixel attributes (group 0028) come last in a file: missing, the file was cut.
    _require(metadata, REQUIRED_IMAGE_ATTRIBUTES)
    photometric = str(metadata["PhotometricInterpretation"]).upper()
    if photometric not in MONOCHROME:
        said = _closed_term("photometric interpretation", photometric, _KNOWN_PHOTOMETRICS)
        raise InputRefused("unsupported_photometric", f"{said} is not grayscale (MONOCHROME1 "
                           "or MONOCHROME2)")
    check_dimensions(_count(metadata["Rows"], 0), _count(metadata["Columns"], 0))
    if "BitsStored" in metadata:
        check_bit_depth(_count(metadata["BitsStored"], 0))


def check_dimensions(rows: int, columns: int) -> None:
    if min(rows, columns) < MIN_SIDE_PX:
        raise InputRefused("too_small", f"the image is {rows}x{columns} pixels; a radiograph "
                           f"has at least {MIN_SIDE_PX} on each side")


def check_bit_depth(bits: int) -> None:
    low, high = BITS_STORED_RANGE
    if not low <= bits <= high:
        raise InputRefused("unsupported_bit_depth", f"{bits} bits per pixel; a radiograph "
                           f"has {low} to {high}")


def check_not_blank(pixels: np.ndarray) -> None:
    """Refuse decoded pixels that hold no image at all (constant, blank). Non-finite values
    never get this far: the modality LUT refuses them where they arise (``_model_view``)."""
    low, high = np.percentile(_quality_sample(pixels), [1, 99])
    if high - low < BLANK_SPREAD:
        raise InputRefused("blank_image", "the image is blank: it has no contrast at all")


def _closed_term(attribute: str, value: str, vocabulary: frozenset[str]) -> str:
    """``attribute value`` when the value is a defined term, else words that echo nothing."""
    if value in vocabulary:
        return f"{attribute} {value}"
    return f"the {attribute} ({'empty' if not value else 'not a defined term'})"


def _require(metadata: Mapping[str, Any], keywords: tuple[str, ...]) -> None:
    missing = [k for k in keywords if k not in metadata]
    if missing:
        raise InputRefused("corrupt_dicom", "the DICOM file is truncated or incomplete: it "
                           f"lacks {', '.join(missing)}")


def declared_pixels(metadata: Mapping[str, Any]) -> int:
    """Rows x Columns x Samples per Pixel x Number of Frames, as the header declares them."""
    return (_count(metadata.get("Rows"), 0) * _count(metadata.get("Columns"), 0)
            * _count(metadata.get("SamplesPerPixel"), 1)
            * _count(metadata.get("NumberOfFrames"), 1))


def _count(value: object, default: int) -> int:
    try:
        return max(int(str(value)), 0) if value not in (None, "") else default
    except ValueError:
        return default


def _check_size(pixels: int, max_pixels: int) -> None:
    if pixels > max_pixels:
        raise InputRefused("too_large", f"the image declares {pixels} pixels, more than the "
                           f"limit of {max_pixels}")


# --- loading ---------------------------------------------------------------------------------


def sniff_format(head: bytes) -> SourceFormat | None:
    """The format by content, not by name: Part 10 DICOM, a bare DICOM dataset, PNG, JPEG."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if _looks_like_bare_dataset(head):
        return "dicom"
    return None


def _looks_like_bare_dataset(head: bytes) -> bool:
    """A dataset without preamble or File Meta (old archives, some C-STORE dumps).

    It starts with a group 0002 or 0008 element in little endian, explicit VR (two valid VR
    letters) or implicit VR (a short first value). pydicom's force=True would read anything
    at all, so this is the gate; whatever passes is then held to the full header checks.
    """
    if len(head) < 8:
        return False
    group, _element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008):
        return False
    return head[4:6] in _EXPLICIT_VRS or struct.unpack("<I", head[4:8])[0] < 0x1000


def load_image(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES, model_side: int | None = None,
               ) -> DecodedImage:
    """Decode a DICOM, PNG or JPEG file (sniffed by content) and check it.

    ``model_side``: only the model's view is needed, at least this long on its longest
    side. A JPEG 2000 image is then decoded at the coarsest resolution level that is still
    that long (its wavelet low-pass band, ISO 15444-1 Annex F), several times faster for
    large images; ``display`` is then that reduced image too.

    Raises InputRefused for anything we will not report on; OSError (a missing file) is
    left to the caller, since it says nothing about the image.
    """
    with open(path, "rb") as handle:
        # read(n) allocates n bytes before reading: ask for what the file holds, not the cap;
        # a file over the cap is refused unread (read's bound still holds if it grows)
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(size + 1) if size <= max_bytes else b""
    if size > max_bytes or len(data) > max_bytes:
        raise InputRefused("too_large", f"the file is larger than {max_bytes} bytes")
    source = sniff_format(data[:132])
    if source is None:
        raise InputRefused("not_dicom_or_image", "the file is not DICOM, PNG or JPEG")
    if source == "dicom":
        return _load_dicom(data, max_pixels, max_bytes, model_side)
    return _load_picture(data, source, max_pixels)


def _load_dicom(data: bytes, max_pixels: int, max_bytes: int,
                model_side: int | None = None) -> DecodedImage:
    part10 = data[128:132] == b"DICM"
    if part10:
        _check_inflated_size(data, max_bytes)
    header = _read_dataset(data, part10, stop_before_pixels=True, reason="corrupt_dicom")
    metadata = dicom_metadata(header)
    _check_size(declared_pixels(metadata), max_pixels)
    check_chest_radiograph(metadata)
    syntax = UID(metadata["TransferSyntaxUID"])
    _check_decodable(syntax)
    try:
        ds = _read_dataset(data, part10, stop_before_pixels=False,
                           reason="corrupt_pixel_data")
        frame = _decode_first_frame(ds, syntax, metadata, model_side)
        pixels = _model_view(ds, frame)
    except InputRefused:
        raise
    except _FATAL:
        raise
    except BaseException as err:  # Rust codecs panic with pyo3's PanicException (BaseException)
        raise InputRefused("corrupt_pixel_data", "the DICOM pixel data could not be "
                           "decoded") from err
    check_not_blank(pixels)
    display = _display_view(ds, frame, pixels)
    quality = quality_of(pixels, _count(metadata.get("BitsStored"), 0) or None)
    if (metadata["SOPClassUID"] == str(DigitalXRayImageStorageForProcessing)
            or str(metadata.get("PresentationIntentType", "")).upper() == "FOR PROCESSING"):
        quality.poor_reasons.append(FOR_PROCESSING)
    return DecodedImage(pixels, display, "dicom", quality, metadata,
                        original_shape=(int(metadata["Rows"]), int(metadata["Columns"])))


def _read_dataset(data: bytes, part10: bool, *, stop_before_pixels: bool,
                  reason: str) -> Dataset:
    """pydicom's reading of our bytes; a bare dataset gets the syntax pydicom found for it.

    A failure is refused with ``reason``: reading the header it is the header that is
    corrupt, reading all of it (the header read before) it is the pixel data."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels,
                             force=not part10)
        if "TransferSyntaxUID" not in ds.file_meta:
            implicit, little = ds.original_encoding
            if not little:
                raise ValueError("big endian dataset without File Meta")
            ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit
                                              else ExplicitVRLittleEndian)
    except _FATAL:
        raise
    except BaseException as err:  # anything a hostile header makes the parser throw
        what = "header" if reason == "corrupt_dicom" else "pixel data"
        raise InputRefused(reason, f"the DICOM {what} could not be read") from err
    return ds


def _check_inflated_size(data: bytes, max_bytes: int) -> None:
    """Count what a deflated dataset (PS3.5 A.5) inflates to before pydicom inflates it,
    since pydicom does so without a bound: a few MB can expand to many GB."""
    start, syntax = file_meta_end(data)
    if syntax != DeflatedExplicitVRLittleEndian:
        return
    try:
        inflated = inflated_size(memoryview(data)[start:], max_bytes)
    except zlib.error as err:
        raise InputRefused("corrupt_dicom", "the deflated DICOM dataset is corrupt") from err
    if inflated > max_bytes:
        raise InputRefused("too_large", f"the deflated DICOM dataset inflates to more than "
                           f"{max_bytes} bytes")


def file_meta_end(data: bytes) -> tuple[int, str]:
    """Where the dataset starts after the File Meta group (always explicit VR little endian,
    PS3.10 7.1), and the Transfer Syntax UID it names."""
    offset, syntax = 132, ""
    while data[offset : offset + 2] == b"\x02\x00" and offset + 8 <= len(data):
        element = struct.unpack("<H", data[offset + 2 : offset + 4])[0]
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            length, header = struct.unpack("<I", data[offset + 8 : offset + 12])[0], 12
        else:
            length, header = struct.unpack("<H", data[offset + 6 : offset + 8])[0], 8
        if element == 0x0010:
            value = data[offset + header : offset + header + length]
            syntax = value.rstrip(b"\0 ").decode("ascii", "replace")
        offset += header + length
    return offset, syntax


def _check_decodable(syntax: UID) -> None:
    """Refuse, before reading pixel data, a transfer syntax no installed plugin decodes."""
    try:
        available = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError):
        available = False
    if not available:
        named = f" {syntax}" if _UID_PATTERN.match(str(syntax)) else ""
        raise InputRefused("unsupported_transfer_syntax", f"transfer syntax{named} cannot be "
                           "decoded here")
    if syntax.is_compressed and not _frame_size_checkable(syntax):
        raise InputRefused("unsupported_transfer_syntax", f"transfer syntax {syntax} is not "
                           "one whose frame size we can check before decoding")


def _frame_size_checkable(syntax: UID) -> bool:
    return syntax in (*JPEG2000TransferSyntaxes, *JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes,
                      *RLETransferSyntaxes)


def _decode_first_frame(ds: Dataset, syntax: UID, metadata: Mapping[str, Any],
                        model_side: int | None = None) -> np.ndarray:
    """The first frame's stored values, (Rows, Columns); multi-frame images give frame 0.

    With ``model_side``, a plain JPEG 2000 frame may come back smaller (see ``load_image``).
    """
    rows, columns = int(metadata["Rows"]), int(metadata["Columns"])
    if syntax.is_encapsulated and syntax not in RLETransferSyntaxes:
        # RLE decoders size their output from the header; JPEG and JPEG 2000 decoders from
        # the codestream, which may declare far more than the header does.
        extended = ((ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
                    if "ExtendedOffsetTable" in ds else None)
        codestream = get_frame(ds.PixelData, 0, extended_offsets=extended,
                               number_of_frames=_count(metadata.get("NumberOfFrames"), 1))
        declared = _codestream_size(codestream, syntax)
        if declared != (rows, columns, 1):
            said = "x".join(map(str, declared)) if declared else "no"
            raise InputRefused("corrupt_pixel_data", f"the compressed frame declares {said} "
                               f"pixels (rows x columns x samples), the header {rows}x{columns}")
        reduced = _reduced_jpeg2000(ds, syntax, codestream, model_side)
        if reduced is not None:
            return reduced
    frame = pixel_array(ds, index=0)
    if frame.shape != (rows, columns):
        raise ValueError(f"decoded {frame.shape}, the header says {(rows, columns)}")
    return frame


def _reduced_jpeg2000(ds: Dataset, syntax: UID, codestream: bytes,
                      model_side: int | None) -> np.ndarray | None:
    """The frame at the coarsest resolution level still >= ``model_side`` long, or None.

    Pillow's OpenJPEG decoder can stop at a resolution level; pydicom's plugins cannot.
    Only unsigned single-sample frames take this path; anything else decodes in full.
    """
    if (model_side is None or syntax not in JPEG2000TransferSyntaxes
            or int(ds.get("SamplesPerPixel", 1)) != 1
            or int(ds.get("PixelRepresentation", 0)) != 0):
        return None
    longest = max(int(ds.Rows), int(ds.Columns))
    reduce = 0
    while longest // 2 ** (reduce + 1) >= model_side:
        reduce += 1
    if reduce == 0:
        return None
    with Image.open(io.BytesIO(codestream)) as image:
        setattr(image, "reduce", reduce)  # noqa: B010 - Jpeg2KImageFile's decode setting
        image.load()
        values = np.asarray(image, dtype=np.uint32)
        mode = image.mode
    # Pillow widens samples of fewer than 16 bits by shifting them up
    shift = 16 - int(ds.BitsStored) if mode.startswith("I;16") else 0
    return (values >> shift).astype(np.uint16)


def _codestream_size(codestream: bytes, syntax: UID) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG 2000 SIZ or a JPEG / JPEG-LS SOF segment."""
    try:
        if syntax in JPEG2000TransferSyntaxes:
            start = 0
            if codestream[4:8] == b"jP  ":  # a JP2 wrapper, which DICOM forbids but some send
                start = codestream.find(b"jp2c") + 4
            siz = codestream[start : start + 42]
            if siz[:4] != b"\xff\x4f\xff\x51":  # SOC then SIZ (ISO 15444-1 A.5.1)
                return None
            x, y, x0, y0 = struct.unpack(">IIII", siz[8:24])
            return y - y0, x - x0, struct.unpack(">H", siz[40:42])[0]
        offset = 2 if codestream[:2] == b"\xff\xd8" else len(codestream)
        while offset + 10 <= len(codestream):
            marker = codestream[offset + 1]
            if codestream[offset] != 0xFF:
                return None
            if marker == 0xFF:  # fill byte before a marker (ISO 10918-1 B.1.1.2)
                offset += 1
                continue
            # SOF0-3, 5-7, 9-11, 13-15 (ISO 10918-1 B.1.1.3) and SOF55 (ISO 14495-1)
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                          0xCE, 0xCF, 0xF7):
                rows, columns = struct.unpack(">HH", codestream[offset + 5 : offset + 9])
                return rows, columns, codestream[offset + 9]
            offset += 2 + struct.unpack(">H", codestream[offset + 2 : offset + 4])[0]
    except (struct.error, IndexError):
        return None
    return None


def _stored_range(ds: Dataset) -> tuple[float, float]:
    """The modality LUT's output for the smallest and the largest storable value.

    As pydicom's windowing computes it (PS3.3 C.11.1): a Modality LUT Sequence spans its
    own bit depth; a rescale maps the stored range [0, 2**BitsStored - 1] (or its signed
    counterpart) through slope and intercept.
    """
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    low, high = ((0, 2**bits - 1) if int(ds.get("PixelRepresentation", 0)) == 0
                 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return low * slope + intercept, high * slope + intercept


def _model_view(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    """Modality LUT, scaled by its full output range, MONOCHROME1 inverted: as in training."""
    values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
    low, high = _stored_range(ds)
    if not (np.isfinite(values).all() and np.isfinite([low, high]).all()):
        raise InputRefused("non_finite_pixels", "the modality LUT (Rescale Slope and "
                           "Intercept) gives values that are not finite numbers")
    scaled = (values - low) / (high - low) if high != low else np.zeros_like(values)
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _display_view(ds: Dataset, frame: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """The first VOI LUT or window (PS3.3 C.11.2) over the modality LUT's output, scaled by
    the VOI output range; the model's view when there is none or it is unusable."""
    has_lut = bool(ds.get("VOILUTSequence"))
    if not has_lut and "WindowCenter" not in ds:
        return pixels
    try:
        values = apply_modality_lut(frame, ds)
        if has_lut:
            if np.all(values == np.round(values)):  # LUTs index with integers
                values = values.astype(np.int64)
            low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        else:
            low, high = _stored_range(ds)
        shown = (np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64) - low)
        shown /= high - low
    except _FATAL:
        raise
    except Exception as err:  # tolerant reading: a broken window costs the window only
        log.warning("VOI LUT not applied (%s); display uses the model's view",
                    type(err).__name__)
        return pixels
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        shown = 1.0 - shown
    return np.clip(shown, 0.0, 1.0).astype(np.float32)


def _load_picture(data: bytes, source: SourceFormat, max_pixels: int) -> DecodedImage:
    """PNG or JPEG through Pillow: grayscale, 8 or 16 bits scaled to [0, 1]."""
    try:
        with Image.open(io.BytesIO(data), formats=[source.upper()]) as image:
            width, height = image.size  # from the header; nothing decoded yet
            _check_size(width * height, max_pixels)
            check_dimensions(height, width)
            if image.mode == "1":
                check_bit_depth(1)
            image.load()
            upright = ImageOps.exif_transpose(image)  # as every viewer shows it
            if upright.mode not in SIXTEEN_BIT_MODES:
                _check_grey(upright)
            pixels, bits = grayscale_pixels(upright)  # the rule training reads files by
    except InputRefused:
        raise
    except Image.DecompressionBombError as err:
        raise InputRefused("too_large", f"the {source.upper()} image declares more pixels "
                           "than Pillow's decompression-bomb limit") from err
    except DECODE_ERRORS as err:
        raise InputRefused("corrupt_pixel_data", f"the {source.upper()} image could not be "
                           "decoded") from err
    pixels = np.clip(pixels, 0.0, 1.0).astype(np.float32)
    check_not_blank(pixels)
    metadata = {"Rows": pixels.shape[0], "Columns": pixels.shape[1], "BitsStored": bits}
    return DecodedImage(pixels, pixels, source, quality_of(pixels, bits), metadata)


def _check_grey(image: Image.Image) -> None:
    """Refuse a colour picture; grey stored as RGB (or a grey palette) is fine."""
    if image.mode in ("L", "LA", "I;16", "I;16B", "I;16L", "I", "F"):
        return
    rgb = _quality_sample(np.asarray(image.convert("RGB"))).astype(np.int16)
    apart = (rgb.max(axis=-1) - rgb.min(axis=-1)) > COLOUR_LEVELS
    if apart.mean() > COLOUR_SHARE:
        raise InputRefused("colour_image", "the image is in colour; a radiograph is grayscale")


# --- quality and model input -----------------------------------------------------------------


def quality_of(pixels: np.ndarray, bits_stored: int | None = None) -> ImageQuality:
    """Size and contrast checks; poor reasons flag the report for a radiologist's review.

    Lossy compression is not poor by itself: archives store lossy images routinely.
    """
    height, width = pixels.shape
    low, high = np.percentile(_quality_sample(pixels), [1, 99])
    spread = float(high - low)
    reasons = []
    if spread < LOW_CONTRAST:
        reasons.append("low_contrast")
    if min(height, width) < SMALL_SIDE_PX:
        reasons.append("small_image")
    return ImageQuality(width=width, height=height, bits_stored=bits_stored,
                        dynamic_range=round(spread, 4), poor_reasons=reasons)


def _quality_sample(pixels: np.ndarray) -> np.ndarray:
    """A strided sample about QUALITY_SAMPLE_SIDE on a side: percentiles barely move."""
    height, width = pixels.shape[:2]
    return pixels[::max(1, height // QUALITY_SAMPLE_SIDE), ::max(1, width // QUALITY_SAMPLE_SIDE)]


def prepare_for_model(decoded: DecodedImage, size: int,
                      clahe: bool = False) -> tuple[np.ndarray, Letterbox]:
    """Optional CLAHE (scikit-image), then the aspect-keeping, padded square the model takes.

    CLAHE is off by default: the model was trained without it.
    """
    pixels = decoded.pixels
    if clahe:
        pixels = equalize_adapthist(pixels, clip_limit=CLAHE_CLIP_LIMIT).astype(np.float32)
    model_input, letterbox = to_model_input(pixels, size)
    if decoded.reduced and decoded.original_shape is not None:  # boxes map to full pixels
        height, width = decoded.original_shape
        letterbox = Letterbox(size, letterbox.scale * pixels.shape[1] / width,
                              letterbox.pad_x, letterbox.pad_y, (height, width))
    return model_input, letterbox
