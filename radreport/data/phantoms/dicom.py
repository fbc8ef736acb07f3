"""Write a phantom study as the DICOM a hospital PACS would hand over.

Real chest radiographs arrive as CR or DX, MONOCHROME1 or MONOCHROME2, with 10 to 16 bits
stored, compressed or not; a reader that only ever sees one flavour breaks on the next site.
``options_for(seed)`` spreads studies over that variety deterministically, ``build_dataset``
makes one complete, valid instance, and ``write_study_dicom`` files it the way a PACS export
does (``<StudyUID>/<SeriesUID>/<SOPUID>.dcm``).

Every identifier is synthetic and says so: names and IDs start with ``PHANTOM``, the
institution is ``RADREPORT SYNTHETIC PHANTOM``, Patient Identity Removed is ``YES``, and the
UIDs are ``2.25`` UUID-derived from the seed (PS3.5 B.2), so they collide with no real root.

Module and attribute rules below cite DICOM PS3.3 (2024 edition) section numbers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Final, Literal, get_args

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from radreport.data.phantoms.study import PhantomStudy

Modality = Literal["CR", "DX"]
Photometric = Literal["MONOCHROME1", "MONOCHROME2"]

MODALITIES: Final[tuple[Modality, ...]] = get_args(Modality)
PHOTOMETRICS: Final[tuple[Photometric, ...]] = get_args(Photometric)
BITS_STORED: Final[tuple[int, ...]] = (10, 12, 14, 16)
TRANSFER_SYNTAXES: Final[tuple[UID, ...]] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    JPEG2000,
)
LOSSY_SYNTAXES: Final[frozenset[UID]] = frozenset({JPEG2000})

CR_IMAGE_STORAGE: Final = UID("1.2.840.10008.5.1.4.1.1.1")
DX_PRESENTATION_STORAGE: Final = UID("1.2.840.10008.5.1.4.1.1.1.1")
SOP_CLASSES: Final[dict[Modality, UID]] = {"CR": CR_IMAGE_STORAGE, "DX": DX_PRESENTATION_STORAGE}

INSTITUTION: Final = "RADREPORT SYNTHETIC PHANTOM"
MANUFACTURER: Final = "radreport"
SOFTWARE_VERSION: Final = "radreport 0.1.0"
IMPLEMENTATION_VERSION: Final = "RADREPORT_010"
_UID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_DNS, "phantom.radreport.invalid")
# A fixed 2.25 UID naming this writer (PS3.7 D.3.3.2); derived, not registered.
IMPLEMENTATION_CLASS_UID: Final = UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, 'dicom-writer').int}")
JPEG2000_LOSSY_RATIO: Final = 10.0
BACKGROUND_LEVEL: Final = 0.02  # image level below which a pixel is direct exposure

# Realistic mixes: CR plates are often MONOCHROME1 at 10-12 bits, flat-panel DX mostly
# MONOCHROME2 at 12-14 bits; most archives store uncompressed or lossless.
_MODALITY_WEIGHTS: Final[dict[Modality, float]] = {"CR": 0.4, "DX": 0.6}
_MONOCHROME1_SHARE: Final[dict[Modality, float]] = {"CR": 0.6, "DX": 0.3}
_BITS_WEIGHTS: Final[dict[Modality, tuple[float, ...]]] = {
    "CR": (0.40, 0.45, 0.10, 0.05),
    "DX": (0.05, 0.35, 0.45, 0.15),
}
_SYNTAX_WEIGHTS: Final[tuple[float, ...]] = (0.35, 0.15, 0.18, 0.14, 0.12, 0.06)

# Geometry by view (PA erect at 180 cm, AP bedside at 100 cm); sets the magnification.
_SOURCE_TO_DETECTOR_MM: Final[dict[str, float]] = {"PA": 1800.0, "AP": 1000.0}
_PATIENT_TO_DETECTOR_MM: Final[dict[str, float]] = {"PA": 150.0, "AP": 150.0}
_KVP: Final[dict[str, float]] = {"PA": 120.0, "AP": 90.0}

# SNOMED CT codes, PS3.16 CID 4009 (DX Anatomy Imaged) and CID 4010 (DX View).
_CHEST: Final = ("816094009", "SCT", "Chest")
_VIEW_CODES: Final[dict[str, tuple[str, str, str]]] = {
    "PA": ("272479007", "SCT", "postero-anterior"),
    "AP": ("399348003", "SCT", "antero-posterior"),
}
_LOSSY_COMPRESSION_CODE: Final = ("113040", "DCM", "Lossy Compression")


@dataclass(frozen=True)
class DicomOptions:
    """How one study is encoded: IOD, pixel polarity, bit depth and transfer syntax."""

    modality: Modality
    photometric: Photometric
    bits_stored: int
    transfer_syntax: str

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.photometric not in PHOTOMETRICS:
            raise ValueError(f"photometric must be one of {PHOTOMETRICS}, got {self.photometric!r}")
        if not 10 <= self.bits_stored <= 16:
            raise ValueError(f"bits_stored must be 10..16, got {self.bits_stored}")
        if UID(self.transfer_syntax) not in TRANSFER_SYNTAXES:
            raise ValueError(f"unsupported transfer syntax {self.transfer_syntax}")

    @property
    def lossy(self) -> bool:
        return UID(self.transfer_syntax) in LOSSY_SYNTAXES

    @property
    def max_value(self) -> int:
        return int(2**self.bits_stored - 1)


def options_for(seed: int) -> DicomOptions:
    """The encoding study ``seed`` is exported with: a fixed, realistic mix over all options.

    Every combination in ``all_options()`` has a non-zero chance. All of them encode: the
    pylibjpeg-openjpeg, pyjpegls and RLE encoders handle unsigned 10 to 16 bit samples, so
    none needs excluding.
    """
    rng = np.random.default_rng([seed, 0xD1C0])
    modality = MODALITIES[_pick(rng, [_MODALITY_WEIGHTS[m] for m in MODALITIES])]
    mono1 = rng.random() < _MONOCHROME1_SHARE[modality]
    bits = BITS_STORED[_pick(rng, _BITS_WEIGHTS[modality])]
    syntax = TRANSFER_SYNTAXES[_pick(rng, _SYNTAX_WEIGHTS)]
    return DicomOptions(modality, "MONOCHROME1" if mono1 else "MONOCHROME2", bits, syntax)


def all_options() -> Iterator[DicomOptions]:
    """Every encoding ``options_for`` can return."""
    for modality, photometric, bits, syntax in product(
        MODALITIES, PHOTOMETRICS, BITS_STORED, TRANSFER_SYNTAXES
    ):
        yield DicomOptions(modality, photometric, bits, syntax)


def _pick(rng: np.random.Generator, weights: tuple[float, ...] | list[float]) -> int:
    p = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(p), p=p / p.sum()))


# --- pixels -----------------------------------------------------------------------------


def stored_values(image: np.ndarray, options: DicomOptions) -> np.ndarray:
    """The image as stored pixel values: [0, 1] scaled to the bit depth, MONOCHROME1 inverted.

    MONOCHROME1 displays the minimum as white (PS3.3 C.7.6.3.1.2), so storing ``max - v``
    shows the same picture as MONOCHROME2 storing ``v``.
    """
    values = np.rint(np.clip(image, 0.0, 1.0) * options.max_value).astype(np.uint16)
    if options.photometric == "MONOCHROME1":
        values = (options.max_value - values).astype(np.uint16)
    return values


@dataclass(frozen=True)
class Window:
    """One VOI LUT linear window in stored units (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    explanation: str


def windows(image: np.ndarray, options: DicomOptions) -> list[Window]:
    """The chest window a modality would ship, then the full dynamic range.

    The default window spans the 1st to 99.5th percentile of the body, leaving out the
    direct-exposure background (as CR/DX exposure recognition does). Windows are computed
    in MONOCHROME2 sense and mirrored for MONOCHROME1 with ``c' = 2**bits - c``, which by
    the linear VOI function of C.11.2.1.2.1 displays exactly the same picture.
    """
    top = options.max_value
    values = np.clip(image, 0.0, 1.0) * top
    body = values[values > BACKGROUND_LEVEL * top]
    lo, hi = (float(x) for x in np.percentile(body if body.size else values, [1.0, 99.5]))
    standard = Window(float(round((lo + hi) / 2.0)), float(max(round(hi - lo), 2)), "STANDARD")
    full = Window(float(2 ** (options.bits_stored - 1)), float(top + 1), "FULL RANGE")
    if options.photometric == "MONOCHROME1":
        return [Window(top + 1 - w.center, w.width, w.explanation) for w in (standard, full)]
    return [standard, full]


# --- identifiers, dates -----------------------------------------------------------------


@dataclass(frozen=True)
class StudyUIDs:
    """The four UIDs of one export; all ``2.25.<uuid>`` and reproducible from the seed."""

    study: UID
    series: UID
    instance: UID
    frame_of_reference: UID


def study_uids(seed: int, options: DicomOptions) -> StudyUIDs:
    """Deterministic UIDs: one study per seed, one series per modality.

    The instance UID changes with anything that changes the pixel values (photometric,
    bits, lossy compression) but not with a lossless transfer syntax, as PS3.5 8.2 asks.
    """
    base = ["radreport-phantom", str(seed)]
    pixels = [options.modality, options.photometric, str(options.bits_stored), str(options.lossy)]
    return StudyUIDs(
        study=_uid(*base, "study"),
        series=_uid(*base, "series", options.modality),
        instance=_uid(*base, "instance", *pixels),
        frame_of_reference=_uid(*base, "frame-of-reference"),
    )


def _uid(*parts: str) -> UID:
    """``2.25.<name-based UUID>`` (PS3.5 B.2): same names, same UID.

    Not ``generate_uid(prefix=None, entropy_srcs=...)``: with no prefix pydicom ignores the
    entropy and returns a random UUID4.
    """
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, '|'.join(parts)).int}")


def _seeded_rng(seed: int, purpose: str) -> np.random.Generator:
    tag = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, tag])


@dataclass(frozen=True)
class StudyTimes:
    """Synthetic acquisition moment and birth date, fixed by the seed."""

    acquired: dt.datetime
    birth_date: dt.date


def study_times(study: PhantomStudy) -> StudyTimes:
    """A day in 2020-2024 between 07:00 and 22:00; the birth date gives the stated age."""
    rng = _seeded_rng(study.seed, "dates")
    day = dt.date(2020, 1, 1) + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    seconds = int(rng.integers(7 * 3600, 22 * 3600))
    acquired = dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=seconds)
    birthday = _years_before(day, study.patient.age_years)
    birth = birthday - dt.timedelta(days=int(rng.integers(0, 365)))
    return StudyTimes(acquired, birth)


def _years_before(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a non-leap year
        return day.replace(year=day.year - years, day=28)


def _da(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def _tm(moment: dt.datetime) -> str:
    return moment.strftime("%H%M%S")


def _code(code: tuple[str, str, str]) -> Dataset:
    """A Code Sequence Macro item (PS3.3 Table 8.8-1)."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _sh(text: str) -> str:
    """Clip to the 16 characters an SH value allows (PS3.5 6.2)."""
    return text[:16]


# --- the dataset ------------------------------------------------------------------------


def build_dataset(study: PhantomStudy, options: DicomOptions) -> Dataset:
    """One complete CR Image or DX For Presentation instance, encoded in ``options``."""
    uids = study_uids(study.seed, options)
    times = study_times(study)
    ds = Dataset()
    ds.file_meta = _file_meta(options, uids)
    _patient(ds, study, times)
    _general_study(ds, study, uids, times)
    _general_series(ds, study, options, uids, times)
    _equipment(ds)
    _general_image(ds, study, options, times)
    _image_pixel(ds, study, options)
    _voi_lut(ds, study, options)
    _spacing(ds, study)
    _exposure(ds, study)
    if options.modality == "CR":
        _cr_modules(ds, study)
    else:
        _dx_modules(ds, study, options, uids)
    _sop_common(ds, options, uids, times)
    _encode(ds, options)
    return ds


def _file_meta(options: DicomOptions, uids: StudyUIDs) -> FileMetaDataset:
    """File Meta Information (PS3.10 7.1); the transfer syntax is set again by compression."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASSES[options.modality]
    meta.MediaStorageSOPInstanceUID = uids.instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def _patient(ds: Dataset, study: PhantomStudy, times: StudyTimes) -> None:
    """Patient Module (C.7.1.1) and Patient Study Module (C.7.2.2), all synthetic."""
    patient = study.patient
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "RADREPORT PHANTOM"
    ds.PatientBirthDate = _da(times.birth_date)
    ds.PatientSex = patient.sex
    # C.7.1.1: identity removed; Deidentification Method is then 1C.
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "SYNTHETIC PHANTOM - NO REAL PATIENT"
    ds.PatientAge = f"{min(patient.age_years, 999):03d}Y"


def _general_study(ds: Dataset, study: PhantomStudy, uids: StudyUIDs, times: StudyTimes) -> None:
    """General Study Module (C.7.2.1)."""
    ds.StudyInstanceUID = uids.study
    ds.StudyDate = _da(times.acquired.date())
    ds.StudyTime = _tm(times.acquired)
    ds.ReferringPhysicianName = "PHANTOM^REFERRER"
    ds.StudyID = _sh(study.study_id)
    ds.AccessionNumber = _sh(f"PHANTOM{study.seed % 10**9:09d}")
    ds.StudyDescription = f"XR CHEST {study.view} 1 VIEW"


def _general_series(ds: Dataset, study: PhantomStudy, options: DicomOptions, uids: StudyUIDs,
                    times: StudyTimes) -> None:
    """General Series Module (C.7.3.1) with the request that led to it."""
    ds.Modality = options.modality
    ds.SeriesInstanceUID = uids.series
    ds.SeriesNumber = 1
    ds.SeriesDate = _da(times.acquired.date())
    ds.SeriesTime = _tm(times.acquired)
    ds.SeriesDescription = f"CHEST {study.view}"
    ds.ProtocolName = f"CHEST {study.view}"
    ds.BodyPartExamined = "CHEST"
    request = Dataset()  # Request Attributes Macro (PS3.3 Table 10-9)
    request.RequestedProcedureID = ds.AccessionNumber
    request.ScheduledProcedureStepID = ds.AccessionNumber
    request.RequestedProcedureDescription = "XR CHEST"
    request.ReasonForTheRequestedProcedure = study.clinical_indication[:64]
    ds.RequestAttributesSequence = Sequence([request])


def _equipment(ds: Dataset) -> None:
    """General Equipment Module (C.7.5.1)."""
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = INSTITUTION
    ds.StationName = "PHANTOM01"
    ds.ManufacturerModelName = "SYNTHETIC PHANTOM"
    ds.DeviceSerialNumber = "PHANTOM-0001"
    ds.SoftwareVersions = SOFTWARE_VERSION


def _general_image(ds: Dataset, study: PhantomStudy, options: DicomOptions,
                   times: StudyTimes) -> None:
    """General Image (C.7.6.1) and General Acquisition (C.7.10.1) Modules."""
    ds.ImageType = ["DERIVED" if options.lossy else "ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 1
    # C.7.6.1.1.1: rows run to the patient's left, columns to the feet (standard display).
    ds.PatientOrientation = ["L", "F"]
    ds.ContentDate = _da(times.acquired.date())
    ds.ContentTime = _tm(times.acquired)
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate = ds.ContentDate
    ds.AcquisitionTime = ds.ContentTime
    ds.ImageComments = "Synthetic phantom radiograph; not an image of a person."
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    # C.7.6.1.1.5: lossy compression is recorded and never reset.
    ds.LossyImageCompression = "01" if options.lossy else "00"
    if options.lossy:
        ds.DerivationDescription = "JPEG 2000 irreversible compression"
        ds.DerivationCodeSequence = Sequence([_code(_LOSSY_COMPRESSION_CODE)])
    # C.7.6.1: identity for MONOCHROME2, inverse for MONOCHROME1 (P-values, bright = high).
    ds.PresentationLUTShape = "INVERSE" if options.photometric == "MONOCHROME1" else "IDENTITY"


def _image_pixel(ds: Dataset, study: PhantomStudy, options: DicomOptions) -> None:
    """Image Pixel Module (C.7.6.3): unsigned samples in a 16-bit container."""
    ds.set_pixel_data(stored_values(study.image, options), options.photometric,
                      options.bits_stored, generate_instance_uid=False)


def _voi_lut(ds: Dataset, study: PhantomStudy, options: DicomOptions) -> None:
    """Modality LUT (C.11.1) identity rescale and VOI LUT (C.11.2) windows."""
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    wins = windows(study.image, options)
    ds.WindowCenter = [w.center for w in wins]
    ds.WindowWidth = [w.width for w in wins]
    ds.WindowCenterWidthExplanation = [w.explanation for w in wins]
    ds.VOILUTFunction = "LINEAR"


def _magnification(study: PhantomStudy) -> float:
    sid = _SOURCE_TO_DETECTOR_MM[study.view]
    return sid / (sid - _PATIENT_TO_DETECTOR_MM[study.view])


def _spacing(ds: Dataset, study: PhantomStudy) -> None:
    """Imager spacing at the detector and calibrated spacing at the patient.

    Basic Pixel Spacing Calibration Macro (PS3.3 Table 10-10, in CR Image C.8.1.2 and DX
    Detector C.8.11.4): Pixel Spacing is the detector spacing divided by the geometric
    magnification, and says so.
    """
    imager = study.pixel_spacing_mm
    patient = round(imager / _magnification(study), 6)
    ds.ImagerPixelSpacing = [imager, imager]
    ds.PixelSpacing = [patient, patient]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "Nominal magnification from source distances"


def _exposure(ds: Dataset, study: PhantomStudy) -> None:
    """Technique factors: CR Image (C.8.1.2); for DX, X-Ray Acquisition Dose (C.8.7.8)."""
    sid = _SOURCE_TO_DETECTOR_MM[study.view]
    ds.DistanceSourceToDetector = sid
    ds.DistanceSourceToPatient = sid - _PATIENT_TO_DETECTOR_MM[study.view]
    ds.KVP = _KVP[study.view]
    ds.XRayTubeCurrent = 250  # mA
    ds.ExposureTime = 12 if study.view == "PA" else 20  # ms
    ds.Exposure = 3 if study.view == "PA" else 5  # mAs


def _cr_modules(ds: Dataset, study: PhantomStudy) -> None:
    """CR Series (C.8.1.1) and CR Image (C.8.1.2) Modules."""
    ds.ViewPosition = study.view
    ds.PlateType = "PHANTOM"
    ds.AcquisitionDeviceProcessingDescription = "CHEST"


def _dx_modules(ds: Dataset, study: PhantomStudy, options: DicomOptions,
                uids: StudyUIDs) -> None:
    """The DX Digital X-Ray For Presentation IOD's own modules (PS3.3 A.26.1)."""
    mono1 = options.photometric == "MONOCHROME1"
    # DX Series (C.8.11.1)
    ds.PresentationIntentType = "FOR PRESENTATION"
    # Frame of Reference (C.7.4.1)
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    # DX Anatomy Imaged (C.8.11.2): the chest is unpaired.
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = Sequence([_code(_CHEST)])
    # DX Image (C.8.11.3)
    ds.PixelIntensityRelationship = "LOG"
    # C.8.11.3.1.2: -1 when higher values mean less X-ray intensity (bone bright).
    ds.PixelIntensityRelationshipSign = 1 if mono1 else -1
    ds.AcquisitionDeviceProcessingDescription = "CHEST"
    # DX Detector (C.8.11.4)
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = "PHANTOM-DET-01"
    ds.DetectorActiveShape = "RECTANGLE"
    side = round(study.pixel_spacing_mm * study.size, 2)
    ds.DetectorActiveDimensions = [side, side]
    # DX Positioning (C.8.11.5)
    ds.ViewPosition = study.view
    # Type 2: a wall stand's tube column for PA, a free detector under the patient for AP.
    ds.PositionerType = "COLUMN" if study.view == "PA" else "NONE"
    ds.ViewCodeSequence = Sequence([_code(_VIEW_CODES[study.view])])
    ds.EstimatedRadiographicMagnificationFactor = round(_magnification(study), 4)
    # Acquisition Context (C.7.6.14): nothing to record, but the sequence is Type 2.
    ds.AcquisitionContextSequence = Sequence()


def _sop_common(ds: Dataset, options: DicomOptions, uids: StudyUIDs, times: StudyTimes) -> None:
    """SOP Common Module (C.12.1)."""
    ds.SOPClassUID = SOP_CLASSES[options.modality]
    ds.SOPInstanceUID = uids.instance
    ds.InstanceCreationDate = _da(times.acquired.date())
    ds.InstanceCreationTime = _tm(times.acquired)


def _encode(ds: Dataset, options: DicomOptions) -> None:
    """Put the pixel data into ``options.transfer_syntax`` (PS3.5 A.4 for encapsulated)."""
    syntax = UID(options.transfer_syntax)
    if not syntax.is_compressed:
        ds.file_meta.TransferSyntaxUID = syntax
        return
    raw_bytes = len(ds.PixelData)
    if options.lossy:
        ds.compress(syntax, j2k_cr=[JPEG2000_LOSSY_RATIO], generate_instance_uid=False)
        # C.7.6.1.1.5: ratio and method of the lossy step.
        ds.LossyImageCompressionRatio = round(raw_bytes / len(ds.PixelData), 2)
        ds.LossyImageCompressionMethod = "ISO_15444_1"
    else:
        ds.compress(syntax, generate_instance_uid=False)


# --- files ------------------------------------------------------------------------------


def dicom_path(out_dir: Path, ds: Dataset) -> Path:
    """Where a PACS-style export puts an instance: study, series, instance folders."""
    return out_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def write_study_dicom(study: PhantomStudy, out_dir: Path,
                      options: DicomOptions | None = None) -> Path:
    """Write ``study`` as one DICOM Part 10 file; returns its path.

    Written to a temporary file and renamed into place, so a reader (or a parallel export)
    never sees half a file.
    """
    if options is None:
        options = options_for(study.seed)
    ds = build_dataset(study, options)
    path = dicom_path(Path(out_dir), ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".dcm.tmp")
    os.close(fd)
    try:
        ds.save_as(tmp_name, enforce_file_format=True)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
