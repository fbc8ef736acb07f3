"""Phantom DICOM export: files read back, decode in every transfer syntax, carry their tags."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_voi_lut
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import (
    BITS_STORED,
    CR_IMAGE_STORAGE,
    DX_PRESENTATION_STORAGE,
    MODALITIES,
    PHOTOMETRICS,
    TRANSFER_SYNTAXES,
    DicomOptions,
    all_options,
    build_dataset,
    options_for,
    stored_values,
    study_uids,
    write_study_dicom,
)
from radreport.data.phantoms.study import PhantomStudy

SEED = 7  # a PA study
AP_SEED = 9
SIZE = 256

COMMON_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientIdentityRemoved", "DeidentificationMethod", "StudyInstanceUID", "StudyDate",
    "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "SeriesInstanceUID",
    "SeriesNumber", "Modality", "BodyPartExamined", "ViewPosition", "Manufacturer",
    "InstitutionName", "InstanceNumber", "PatientOrientation", "ContentDate", "ContentTime",
    "ImagerPixelSpacing", "PixelSpacing", "WindowCenter", "WindowWidth",
    "WindowCenterWidthExplanation", "RescaleIntercept", "RescaleSlope", "RescaleType",
    "LossyImageCompression", "PresentationLUTShape", "SOPClassUID", "SOPInstanceUID",
)
DX_TAGS = (
    "PresentationIntentType", "ImageLaterality", "AnatomicRegionSequence", "ImageType",
    "PixelIntensityRelationship", "PixelIntensityRelationshipSign", "DetectorType",
    "ViewCodeSequence", "PositionerType", "AcquisitionContextSequence", "FrameOfReferenceUID",
    "EstimatedRadiographicMagnificationFactor", "BurnedInAnnotation",
)


@pytest.fixture(scope="module")
def study() -> PhantomStudy:
    return generate_study(SEED, SIZE)


def write_and_read(study: PhantomStudy, options: DicomOptions, out: Path) -> Dataset:
    return pydicom.dcmread(write_study_dicom(study, out, options))


def case_id(options: DicomOptions) -> str:
    return (f"{options.modality}-{options.photometric}-{options.bits_stored}bit-"
            f"{options.transfer_syntax}")


def lossless_cases() -> list[DicomOptions]:
    """Every lossless syntax in both polarities and both IODs, bit depths taking turns."""
    syntaxes = [s for s in TRANSFER_SYNTAXES if not DicomOptions("DX", "MONOCHROME2", 12, s).lossy]
    cases = []
    for i, syntax in enumerate(syntaxes):
        for j, (modality, photometric) in enumerate(
            [(m, p) for m in MODALITIES for p in PHOTOMETRICS]
        ):
            bits = BITS_STORED[(i + j) % len(BITS_STORED)]
            cases.append(DicomOptions(modality, photometric, bits, syntax))
    return cases


@pytest.mark.parametrize("options", lossless_cases(), ids=case_id)
def test_lossless_files_decode_to_the_stored_values(
    study: PhantomStudy, options: DicomOptions, tmp_path: Path
) -> None:
    ds = write_and_read(study, options, tmp_path)
    assert ds.file_meta.TransferSyntaxUID == options.transfer_syntax
    assert ds.BitsStored == options.bits_stored and ds.HighBit == options.bits_stored - 1
    assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
    assert ds.PhotometricInterpretation == options.photometric
    assert ds.LossyImageCompression == "00"
    pixels = ds.pixel_array
    expected = stored_values(study.image, options)
    assert pixels.shape == (SIZE, SIZE)
    np.testing.assert_array_equal(pixels, expected)
    assert int(expected.max()) <= options.max_value


@pytest.mark.parametrize("photometric", PHOTOMETRICS)
@pytest.mark.parametrize("bits", [10, 16])
def test_jpeg2000_lossy_is_close_and_labelled(
    study: PhantomStudy, photometric: str, bits: int, tmp_path: Path
) -> None:
    lossy = [s for s in TRANSFER_SYNTAXES if DicomOptions("CR", "MONOCHROME2", 12, s).lossy]
    assert lossy, "JPEG 2000 lossy is offered"
    options = DicomOptions("DX", photometric, bits, lossy[0])  # type: ignore[arg-type]
    ds = write_and_read(study, options, tmp_path)
    error = ds.pixel_array.astype(np.float64) - stored_values(study.image, options)
    psnr = 20 * np.log10(options.max_value / np.sqrt(np.mean(error**2)))
    assert psnr > 40.0
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_15444_1"
    assert float(ds.LossyImageCompressionRatio) > 2.0
    assert ds.ImageType[0] == "DERIVED"


def displayed(ds: Dataset, window: int) -> np.ndarray:
    """What a viewer shows, 0 black to 1 white: VOI window, then MONOCHROME1 inverted."""
    top = 2**ds.BitsStored - 1
    shown = apply_voi_lut(ds.pixel_array, ds, index=window).astype(np.float64) / top
    return 1.0 - shown if ds.PhotometricInterpretation == "MONOCHROME1" else shown


@pytest.mark.parametrize("bits", BITS_STORED)
def test_monochrome1_displays_the_same_picture(
    study: PhantomStudy, bits: int, tmp_path: Path
) -> None:
    mono2 = write_and_read(study, DicomOptions("CR", "MONOCHROME2", bits, RLELossless),
                           tmp_path / "m2")
    mono1 = write_and_read(study, DicomOptions("CR", "MONOCHROME1", bits, RLELossless),
                           tmp_path / "m1")
    top = 2**bits - 1
    np.testing.assert_array_equal(mono1.pixel_array, top - mono2.pixel_array.astype(np.int64))
    assert mono1.PresentationLUTShape == "INVERSE" and mono2.PresentationLUTShape == "IDENTITY"
    for window in range(len(mono2.WindowCenter)):
        np.testing.assert_allclose(displayed(mono1, window), displayed(mono2, window), atol=1e-9)
    # Bone (the brightest part of the phantom) is bright on screen in both.
    bright = study.image > np.percentile(study.image, 99)
    dark = study.image < np.percentile(study.image, 20)
    for ds in (mono1, mono2):
        shown = displayed(ds, 0)
        assert shown[bright].mean() > shown[dark].mean() + 0.3


def test_windows_are_realistic(study: PhantomStudy) -> None:
    for bits in BITS_STORED:
        ds = build_dataset(study, DicomOptions("DX", "MONOCHROME2", bits, ExplicitVRLittleEndian))
        top = 2**bits - 1
        center, width = float(ds.WindowCenter[0]), float(ds.WindowWidth[0])
        assert 0.2 * top < center < 0.8 * top and 0.3 * top < width <= top + 1
        assert list(ds.WindowCenterWidthExplanation) == ["STANDARD", "FULL RANGE"]
        assert ds.VOILUTFunction == "LINEAR"


def test_uids_are_valid_distinct_and_deterministic(study: PhantomStudy) -> None:
    options = DicomOptions("DX", "MONOCHROME2", 12, JPEGLSLossless)
    uids = study_uids(SEED, options)
    values = [uids.study, uids.series, uids.instance, uids.frame_of_reference]
    assert all(UID(v).is_valid and v.startswith("2.25.") for v in values)
    assert len(set(values)) == 4
    assert study_uids(SEED, options) == uids
    assert study_uids(SEED + 1, options).study != uids.study
    ds = build_dataset(study, options)
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == tuple(values[:3])
    assert ds.FrameOfReferenceUID == uids.frame_of_reference
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert UID(ds.file_meta.ImplementationClassUID).is_valid


def test_uids_follow_dicom_identity_rules() -> None:
    """One study per seed; a lossless re-encoding is the same instance, new pixels are not."""
    base = DicomOptions("DX", "MONOCHROME2", 12, ExplicitVRLittleEndian)
    uids = study_uids(SEED, base)
    same_pixels = study_uids(SEED, replace(base, transfer_syntax=JPEG2000Lossless))
    assert same_pixels == uids
    cr = study_uids(SEED, replace(base, modality="CR"))
    assert cr.study == uids.study and cr.series != uids.series and cr.instance != uids.instance
    for other in (replace(base, photometric="MONOCHROME1"), replace(base, bits_stored=14)):
        assert study_uids(SEED, other).instance != uids.instance
        assert study_uids(SEED, other).series == uids.series


@pytest.mark.parametrize("seed", [SEED, AP_SEED])
@pytest.mark.parametrize("modality", MODALITIES)
def test_tags_present_and_taken_from_the_study(seed: int, modality: str, tmp_path: Path) -> None:
    study = generate_study(seed, SIZE)
    assert study.view == ("PA" if seed == SEED else "AP")
    options = DicomOptions(modality, "MONOCHROME2", 12, ImplicitVRLittleEndian)  # type: ignore[arg-type]
    path = write_study_dicom(study, tmp_path, options)
    assert path.read_bytes()[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    tags = COMMON_TAGS + (DX_TAGS if modality == "DX" else ())
    missing = [t for t in tags if t not in ds]
    assert not missing, missing
    assert ds.SOPClassUID == {"CR": CR_IMAGE_STORAGE, "DX": DX_PRESENTATION_STORAGE}[modality]
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.Modality == modality and ds.ViewPosition == study.view
    assert ds.BodyPartExamined == "CHEST" and list(ds.PatientOrientation) == ["L", "F"]
    assert ds.PatientName == study.patient.patient_name
    assert ds.PatientID == study.patient.patient_id
    assert ds.PatientSex == study.patient.sex
    assert ds.PatientAge == f"{study.patient.age_years:03d}Y"
    assert ds.PatientIdentityRemoved == "YES" and "PHANTOM" in ds.InstitutionName
    assert ds.Manufacturer == "radreport"
    assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(study.pixel_spacing_mm)
    assert float(ds.PixelSpacing[0]) < float(ds.ImagerPixelSpacing[0])  # magnification
    assert float(ds.DistanceSourceToDetector) == (1800.0 if study.view == "PA" else 1000.0)
    if modality == "DX":
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.AnatomicRegionSequence[0].CodingSchemeDesignator == "SCT"
        assert ds.ViewCodeSequence[0].CodeMeaning.replace("-", "").lower() == {
            "PA": "posteroanterior", "AP": "anteroposterior"}[study.view]


def test_birth_date_gives_the_stated_age(study: PhantomStudy) -> None:
    ds = build_dataset(study, options_for(SEED))
    born = dt.datetime.strptime(ds.PatientBirthDate, "%Y%m%d").date()
    seen = dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date()
    age = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    assert age == study.patient.age_years
    assert build_dataset(study, options_for(SEED)).StudyTime == ds.StudyTime


def test_write_layout_default_options_and_no_leftovers(
    study: PhantomStudy, tmp_path: Path
) -> None:
    path = write_study_dicom(study, tmp_path)
    ds = pydicom.dcmread(path)
    series_dir = tmp_path / ds.StudyInstanceUID / ds.SeriesInstanceUID
    assert path == series_dir / f"{ds.SOPInstanceUID}.dcm"
    options = options_for(study.seed)
    assert ds.Modality == options.modality and ds.BitsStored == options.bits_stored
    assert ds.file_meta.TransferSyntaxUID == options.transfer_syntax
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [path.name]
    assert write_study_dicom(study, tmp_path) == path  # rewriting replaces in place


def test_options_for_is_deterministic_and_covers_everything() -> None:
    picks = [options_for(seed) for seed in range(600)]
    assert picks == [options_for(seed) for seed in range(600)]
    possible = set(all_options())
    assert set(picks) <= possible
    assert len(possible) == len(MODALITIES) * len(PHOTOMETRICS) * len(BITS_STORED) * len(
        TRANSFER_SYNTAXES)
    for field, values in (("modality", MODALITIES), ("photometric", PHOTOMETRICS),
                          ("bits_stored", BITS_STORED), ("transfer_syntax", TRANSFER_SYNTAXES)):
        counts = Counter(getattr(p, field) for p in picks)
        assert set(counts) == set(values), field
    syntaxes = Counter(p.transfer_syntax for p in picks)
    assert syntaxes[ExplicitVRLittleEndian] == max(syntaxes.values())  # mostly uncompressed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"modality": "CT"},
        {"photometric": "RGB"},
        {"bits_stored": 8},
        {"bits_stored": 17},
        {"transfer_syntax": "1.2.840.10008.1.2.4.50"},  # JPEG baseline: 8 bits only
    ],
)
def test_options_reject_what_cannot_be_encoded(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"modality": "DX", "photometric": "MONOCHROME2",
                               "bits_stored": 12, "transfer_syntax": ExplicitVRLittleEndian}
    with pytest.raises(ValueError):
        DicomOptions(**(base | kwargs))  # type: ignore[arg-type]
