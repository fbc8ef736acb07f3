"""Decoding every transfer syntax we accept, both photometric interpretations, PNG and
JPEG, to the image the model was trained on; refusing, before decoding, what is not a
chest radiograph or too large, and saying why without PHI.

Phantom DICOMs come from the project's own writer; dcmtk's encoders make the JPEG
processes the writer does not (baseline, extended, lossless), pydicom the deflated and
near-lossless ones.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from radreport.data.phantoms import PhantomStudy, generate_study
from radreport.data.phantoms.dicom import (
    DicomOptions,
    build_dataset,
    options_for,
    write_study_dicom,
)
from radreport.data.phantoms.export import ExportJob, write_study
from services.preprocess import imaging
from services.preprocess.imaging import (
    InputRefused,
    check_chest_radiograph,
    intensity_histogram,
    load_image,
    prepare_for_model,
    quality_of,
    sniff_format,
)

SIZE = 384  # SMALL_SIDE_PX: smaller studies are flagged small_image
SEED = 5
LOSSLESS_WRITER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless,
                            JPEGLSLossless, JPEG2000Lossless]


@pytest.fixture(scope="module")
def study() -> PhantomStudy:
    return generate_study(SEED, SIZE)


@pytest.fixture(scope="module")
def truth(study: PhantomStudy) -> np.ndarray:
    return study.image.astype(np.float32)


def _options(syntax: str = ExplicitVRLittleEndian, photometric: str = "MONOCHROME2",
             bits: int = 12, modality: str = "DX") -> DicomOptions:
    return DicomOptions(modality, photometric, bits, str(syntax))  # type: ignore[arg-type]


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _rounding(bits: int) -> float:
    """The most a value can move by being stored in ``bits`` bits."""
    return 0.5 / (2**bits - 1) + 1e-6


def _dcmtk(tool: str, *args: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is missing: install the Debian package dcmtk (`make setup` does)")
    subprocess.run([tool, *args], check=True, capture_output=True)


def _refused(path: Path, **limits: int) -> InputRefused:
    with pytest.raises(InputRefused) as refused:
        load_image(path, **limits)
    return refused.value


def _assert_no_phi(err: InputRefused, ds: Dataset) -> None:
    text = str(err)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName",
                    "AccessionNumber"):
        assert str(ds.get(keyword)) not in text, keyword
    assert "PHANTOM" not in text.upper()


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any pixel data gets decoded."""
    def refuse(*args: Any, **kwargs: Any) -> np.ndarray:
        raise AssertionError("pixel data was decoded")
    monkeypatch.setattr(imaging, "pixel_array", refuse)


# --- every transfer syntax ---------------------------------------------------------------


@pytest.mark.parametrize("syntax", LOSSLESS_WRITER_SYNTAXES)
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_lossless_syntaxes_decode_to_the_training_image(
        tmp_path: Path, study: PhantomStudy, truth: np.ndarray, syntax: str,
        photometric: str) -> None:
    decoded = load_image(write_study_dicom(study, tmp_path, _options(syntax, photometric)))
    assert decoded.source_format == "dicom"
    assert decoded.pixels.dtype == np.float32 and decoded.pixels.shape == truth.shape
    assert np.abs(decoded.pixels - truth).max() <= _rounding(12)
    assert decoded.metadata["TransferSyntaxUID"] == str(syntax)
    assert decoded.metadata["PhotometricInterpretation"] == photometric


@pytest.mark.parametrize("bits", [10, 14, 16])
def test_every_bit_depth_is_scaled_by_its_stored_range(tmp_path: Path, study: PhantomStudy,
                                                       truth: np.ndarray, bits: int) -> None:
    decoded = load_image(write_study_dicom(study, tmp_path, _options(JPEGLSLossless, bits=bits)))
    assert np.abs(decoded.pixels - truth).max() <= _rounding(bits)
    assert decoded.quality.bits_stored == bits


def test_exported_dicom_decodes_to_the_exported_png(tmp_path: Path) -> None:
    """The phantom export's PNG and DICOM (its own mix of encodings) are the same image."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for seed in range(5):
        record = write_study(ExportJob(seed, SIZE, tmp_path, None, dicom=True))
        png = load_image(tmp_path / record["image"])
        dicom = load_image(tmp_path / record["dicom"])
        options = options_for(seed)
        error = np.abs(dicom.pixels - png.pixels)
        if options.lossy:
            assert error.mean() < 0.01, options
        else:
            assert error.max() <= _rounding(options.bits_stored) + _rounding(16), options


def test_lossy_jpeg2000_and_near_lossless_jpeg_ls_are_close(
        tmp_path: Path, study: PhantomStudy, truth: np.ndarray) -> None:
    decoded = load_image(write_study_dicom(study, tmp_path, _options(JPEG2000)))
    assert np.abs(decoded.pixels - truth).mean() < 0.01
    ds = build_dataset(study, _options())
    ds.compress(JPEGLSNearLossless, jls_error=3, generate_instance_uid=False)
    near = load_image(_save(ds, tmp_path / "near.dcm"))
    assert near.metadata["TransferSyntaxUID"] == str(JPEGLSNearLossless)
    assert np.abs(near.pixels - truth).max() <= 3 / 4095 + _rounding(12)


def test_deflated_dataset(tmp_path: Path, study: PhantomStudy, truth: np.ndarray) -> None:
    ds = build_dataset(study, _options())
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = _save(ds, tmp_path / "deflated.dcm")
    assert path.stat().st_size < len(ds.PixelData)  # really deflated
    decoded = load_image(path)
    assert decoded.metadata["TransferSyntaxUID"] == str(DeflatedExplicitVRLittleEndian)
    assert np.abs(decoded.pixels - truth).max() <= _rounding(12)


@pytest.mark.parametrize(("flag", "syntax", "lossy"), [
    ("+e1", "1.2.840.10008.1.2.4.70", False),  # JPEG Lossless SV1 (process 14, first order)
    ("+el", "1.2.840.10008.1.2.4.57", False),  # JPEG Lossless (process 14)
    ("+ee", "1.2.840.10008.1.2.4.51", True),  # JPEG Extended (process 2 & 4), 12 bits
    ("+eb", "1.2.840.10008.1.2.4.50", True),  # JPEG Baseline (process 1), rescaled to 8 bits
])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_dcmtk_jpeg_processes(tmp_path: Path, study: PhantomStudy, truth: np.ndarray,
                              flag: str, syntax: str, lossy: bool, photometric: str) -> None:
    source = write_study_dicom(study, tmp_path, _options(photometric=photometric))
    encoded = tmp_path / "jpeg.dcm"
    _dcmtk("dcmcjpeg", flag, str(source), str(encoded))
    decoded = load_image(encoded)
    assert decoded.metadata["TransferSyntaxUID"] == syntax
    error = np.abs(decoded.pixels - truth)
    if lossy:
        assert error.mean() < 0.01 and error.max() < 0.1
    else:
        assert error.max() <= _rounding(12)


def test_a_dataset_without_preamble_or_file_meta(tmp_path: Path, study: PhantomStudy,
                                                 truth: np.ndarray) -> None:
    for implicit, syntax in ((True, ImplicitVRLittleEndian), (False, ExplicitVRLittleEndian)):
        ds = build_dataset(study, _options())
        del ds.file_meta
        ds.preamble = None
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, implicit_vr=implicit, little_endian=True)
        path = tmp_path / "bare.dcm"
        path.write_bytes(buffer.getvalue())
        assert sniff_format(buffer.getvalue()[:132]) == "dicom"
        decoded = load_image(path)
        assert decoded.metadata["TransferSyntaxUID"] == str(syntax)
        assert np.abs(decoded.pixels - truth).max() <= _rounding(12)


def test_multi_frame_gives_the_first_frame(tmp_path: Path, study: PhantomStudy,
                                           truth: np.ndarray) -> None:
    ds = build_dataset(study, _options())
    frame = ds.pixel_array
    ds.set_pixel_data(np.stack([frame, 4095 - frame]), "MONOCHROME2", 12,
                      generate_instance_uid=False)
    decoded = load_image(_save(ds, tmp_path / "frames.dcm"))
    assert decoded.metadata["NumberOfFrames"] == 2
    assert np.abs(decoded.pixels - truth).max() <= _rounding(12)


# --- the model's view and the radiologist's view -----------------------------------------


def test_both_photometric_interpretations_give_the_same_picture(
        tmp_path: Path, study: PhantomStudy) -> None:
    mono1, mono2 = (load_image(write_study_dicom(study, tmp_path / p, _options(photometric=p)))
                    for p in ("MONOCHROME1", "MONOCHROME2"))
    assert np.array_equal(mono1.pixels, mono2.pixels)
    assert np.abs(mono1.display - mono2.display).max() < 1e-5


def test_display_is_the_first_window_and_pixels_the_full_range(
        tmp_path: Path, study: PhantomStudy, truth: np.ndarray) -> None:
    ds = build_dataset(study, _options())
    center, width = float(ds.WindowCenter[0]), float(ds.WindowWidth[0])
    decoded = load_image(_save(ds, tmp_path / "window.dcm"))
    stored = truth * 4095
    expected = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1
    assert np.abs(decoded.display - expected).max() < 1e-3
    assert not np.allclose(decoded.display, decoded.pixels, atol=0.05)  # the window did work
    del ds.WindowCenter, ds.WindowWidth
    unwindowed = load_image(_save(ds, tmp_path / "none.dcm"))
    assert np.array_equal(unwindowed.display, unwindowed.pixels)


def test_a_voi_lut_sequence_is_applied_for_display(tmp_path: Path, study: PhantomStudy,
                                                   truth: np.ndarray) -> None:
    ds = build_dataset(study, _options())
    del ds.WindowCenter, ds.WindowWidth, ds.WindowCenterWidthExplanation
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.add_new("LUTData", "US", np.round(np.sqrt(np.arange(4096) / 4095) * 65535)
                .astype(int).tolist())
    ds.VOILUTSequence = Sequence([lut])
    decoded = load_image(_save(ds, tmp_path / "lut.dcm"))
    assert np.abs(decoded.display - np.sqrt(truth)).max() < 0.02
    assert np.abs(decoded.pixels - truth).max() <= _rounding(12)  # the model's view unchanged


def test_a_broken_window_costs_only_the_display(tmp_path: Path, study: PhantomStudy) -> None:
    ds = build_dataset(study, _options())
    ds.WindowWidth = [0, 0]  # LINEAR needs >= 1 (PS3.3 C.11.2.1.2.1)
    decoded = load_image(_save(ds, tmp_path / "bad-window.dcm"))
    assert np.array_equal(decoded.display, decoded.pixels)


def test_a_rescale_is_undone_by_the_full_output_range(tmp_path: Path, study: PhantomStudy,
                                                      truth: np.ndarray) -> None:
    ds = build_dataset(study, _options())
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    decoded = load_image(_save(ds, tmp_path / "rescaled.dcm"))
    assert np.abs(decoded.pixels - truth).max() <= _rounding(12)


def test_metadata_holds_image_identifiers_and_no_person(tmp_path: Path,
                                                        study: PhantomStudy) -> None:
    path = write_study_dicom(study, tmp_path, _options())
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    metadata = load_image(path).metadata
    assert {"Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation",
            "TransferSyntaxUID", "SOPClassUID", "Rows", "Columns", "BitsStored",
            "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
            "ImageLaterality"} <= metadata.keys()
    assert metadata["SOPInstanceUID"] == ds.SOPInstanceUID and metadata["Rows"] == SIZE
    values = {str(v) for v in metadata.values()}
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        assert str(ds[keyword].value) not in values


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "reason"), [
    ({"Modality": "CT"}, "wrong_modality"),
    ({"Modality": "MR"}, "wrong_modality"),
    ({"BodyPartExamined": "ABDOMEN"}, "not_chest"),
    ({"SOPClassUID": SecondaryCaptureImageStorage}, "unsupported_sop_class"),
    ({"SOPClassUID": CTImageStorage}, "unsupported_sop_class"),
    ({"PhotometricInterpretation": "RGB"}, "unsupported_photometric"),
    ({"PhotometricInterpretation": "YBR_FULL"}, "unsupported_photometric"),
    ({"Rows": 200}, "too_small"),
    ({"BitsStored": 1}, "unsupported_bit_depth"),
    ({"BitsStored": 5}, "unsupported_bit_depth"),
])
def test_what_is_not_a_chest_radiograph_is_refused_undecoded(
        tmp_path: Path, study: PhantomStudy, no_decoding: None, change: dict[str, str],
        reason: str) -> None:
    ds = build_dataset(study, _options())
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    refused = _refused(_save(ds, tmp_path / "changed.dcm"))
    assert refused.reason == reason
    _assert_no_phi(refused, ds)


def test_header_text_is_never_echoed(study: PhantomStudy) -> None:
    ds = build_dataset(study, _options())
    base = imaging.dicom_metadata(ds)
    for keyword in ("Modality", "BodyPartExamined", "PhotometricInterpretation", "SOPClassUID"):
        with pytest.raises(InputRefused) as refused:
            check_chest_radiograph({**base, keyword: str(ds.PatientName)})
        _assert_no_phi(refused.value, ds)
    assert "modality CT " in str(_check({**base, "Modality": "CT"}))  # closed vocabulary


def _check(metadata: dict[str, Any]) -> InputRefused:
    with pytest.raises(InputRefused) as refused:
        check_chest_radiograph(metadata)
    return refused.value


def test_body_part_may_be_empty_absent_or_another_word_for_chest(study: PhantomStudy) -> None:
    base = imaging.dicom_metadata(build_dataset(study, _options()))
    check_chest_radiograph({**base, "BodyPartExamined": ""})
    check_chest_radiograph({k: v for k, v in base.items() if k != "BodyPartExamined"})
    check_chest_radiograph({**base, "BodyPartExamined": "thorax"})
    missing = _check({k: v for k, v in base.items() if k != "StudyInstanceUID"})
    assert missing.reason == "corrupt_dicom"


def test_a_huge_declared_size_is_refused_before_decoding(tmp_path: Path, study: PhantomStudy,
                                                         no_decoding: None) -> None:
    ds = build_dataset(study, _options())
    ds.Rows = ds.Columns = 60000  # 3.6 gigapixels declared, 128 kB of pixel data
    refused = _refused(_save(ds, tmp_path / "huge.dcm"))
    assert refused.reason == "too_large"
    _assert_no_phi(refused, ds)
    frames = build_dataset(study, _options())
    frames.NumberOfFrames = 1000  # frames count too
    assert _refused(_save(frames, tmp_path / "frames.dcm"),
                    max_pixels=SIZE * SIZE * 10).reason == "too_large"


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless])
def test_a_codestream_larger_than_its_header_is_refused_undecoded(
        tmp_path: Path, study: PhantomStudy, no_decoding: None, syntax: str) -> None:
    """Codecs allocate what the codestream declares: a SIZE px header must not hide more."""
    big = build_dataset(study, _options())
    big.set_pixel_data(np.tile(big.pixel_array, (3, 3)), "MONOCHROME2", 12,
                       generate_instance_uid=False)
    big.compress(syntax, generate_instance_uid=False)
    ds = build_dataset(study, _options(syntax))
    ds.PixelData = big.PixelData
    refused = _refused(_save(ds, tmp_path / "bomb.dcm"))
    assert refused.reason == "corrupt_pixel_data"
    assert f"{3 * SIZE}x{3 * SIZE}x1" in str(refused)


@pytest.mark.parametrize(("flag", "syntax"), [
    ("+eb", "1.2.840.10008.1.2.4.50"),  # JPEG Baseline (process 1)
    ("+e1", "1.2.840.10008.1.2.4.70"),  # JPEG Lossless SV1 (process 14)
])
def test_a_jpeg_codestream_larger_than_its_header_is_refused_undecoded(
        tmp_path: Path, study: PhantomStudy, no_decoding: None, flag: str, syntax: str) -> None:
    """The same bomb in the JPEG processes, encoded by dcmtk (pydicom has no JPEG encoder)."""
    big = build_dataset(study, _options())
    big.set_pixel_data(np.tile(big.pixel_array, (3, 3)), "MONOCHROME2", 12,
                       generate_instance_uid=False)
    encoded = tmp_path / "big-jpeg.dcm"
    _dcmtk("dcmcjpeg", flag, str(_save(big, tmp_path / "big.dcm")), str(encoded))
    ds = build_dataset(study, _options())
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = pydicom.dcmread(encoded).PixelData
    ds["PixelData"].VR = "OB"
    refused = _refused(_save(ds, tmp_path / "bomb.dcm"))
    assert refused.reason == "corrupt_pixel_data"
    assert f"{3 * SIZE}x{3 * SIZE}x1" in str(refused)


def test_a_codec_panic_is_a_refusal(tmp_path: Path, study: PhantomStudy) -> None:
    """pylibjpeg-rle panics (a BaseException) on this; it must not escape as one."""
    big = build_dataset(study, _options())
    big.set_pixel_data(np.tile(big.pixel_array, (2, 2)), "MONOCHROME2", 12,
                       generate_instance_uid=False)
    big.compress(RLELossless, generate_instance_uid=False)
    ds = build_dataset(study, _options(RLELossless))
    ds.PixelData = big.PixelData
    assert _refused(_save(ds, tmp_path / "rle.dcm")).reason == "corrupt_pixel_data"


def test_a_deflate_bomb_is_refused(tmp_path: Path, study: PhantomStudy,
                                   no_decoding: None) -> None:
    ds = build_dataset(study, _options())
    block = ds.private_block(0x0009, "RADREPORT TEST", create=True)
    block.add_new(0x10, "OB", bytes(8 * 2**20))  # 8 MiB of zeros deflate to a few kB
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = _save(ds, tmp_path / "bomb.dcm")
    assert path.stat().st_size < 2**20
    assert _refused(path, max_bytes=2**20).reason == "too_large"


def test_an_undecodable_transfer_syntax_is_refused(tmp_path: Path, study: PhantomStudy,
                                                   no_decoding: None) -> None:
    ds = build_dataset(study, _options(JPEG2000Lossless))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    refused = _refused(_save(ds, tmp_path / "mpeg.dcm"))
    assert refused.reason == "unsupported_transfer_syntax"
    assert str(MPEG2MPML) in str(refused)


def test_truncated_corrupt_and_unknown_files_are_refused(tmp_path: Path,
                                                         study: PhantomStudy) -> None:
    ds = build_dataset(study, _options())
    data = _save(ds, tmp_path / "whole.dcm").read_bytes()
    cases = {
        "half.dcm": (data[: len(data) // 2], "corrupt_pixel_data"),
        "header.dcm": (data[:300], "corrupt_dicom"),
        "preamble.dcm": (bytes(128) + b"DICM" + bytes(64), "corrupt_dicom"),
        "noise.dcm": (np.random.default_rng(0).bytes(4096), "not_dicom_or_image"),
        "empty.dcm": (b"", "not_dicom_or_image"),
        "text.dcm": (b"hello" * 100, "not_dicom_or_image"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        refused = _refused(path)
        assert refused.reason == reason, name
        _assert_no_phi(refused, ds)


def test_a_file_over_the_byte_limit_is_refused_unread(tmp_path: Path,
                                                      study: PhantomStudy) -> None:
    path = write_study_dicom(study, tmp_path, _options())
    assert _refused(path, max_bytes=1000).reason == "too_large"


# --- PNG and JPEG --------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "scale"), [(np.uint8, 255), (np.uint16, 65535)])
def test_png_8_and_16_bit(tmp_path: Path, truth: np.ndarray, dtype: type, scale: int) -> None:
    path = tmp_path / "study.dcm"  # the name lies; the content decides
    Image.fromarray(np.round(truth * scale).astype(dtype)).save(path, format="PNG")
    decoded = load_image(path)
    assert decoded.source_format == "png"
    assert np.abs(decoded.pixels - truth).max() <= 0.5 / scale + 1e-6
    assert decoded.quality.bits_stored == (8 if scale == 255 else 16)
    assert np.array_equal(decoded.display, decoded.pixels)


def test_a_dark_16_bit_png_is_not_mistaken_for_8_bit(tmp_path: Path) -> None:
    path = tmp_path / "dark.png"
    dark = np.tile(np.arange(300, dtype=np.uint16) * 4, (300, 1))  # 0 to 1196 of 65535
    Image.fromarray(dark).save(path)
    assert load_image(path).pixels.max() == pytest.approx(1196 / 65535)


def test_jpeg_and_colour_inputs_become_grayscale(tmp_path: Path, truth: np.ndarray) -> None:
    gray = np.round(truth * 255).astype(np.uint8)
    jpeg = tmp_path / "study.jpg"
    Image.fromarray(gray).save(jpeg, quality=95)
    decoded = load_image(jpeg)
    assert decoded.source_format == "jpeg"
    assert np.abs(decoded.pixels - truth).mean() < 0.01
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(rgb)
    assert np.abs(load_image(rgb).pixels - truth).max() <= 0.5 / 255 + 1e-6


def test_reading_a_file_takes_memory_for_what_it_holds_not_for_the_cap(
        tmp_path: Path, truth: np.ndarray) -> None:
    """read(n) allocates n bytes before reading; with n the 256 MiB cap, every study cost a
    256 MiB allocation (found by bench chaos's bomb figures)."""
    path = _png(tmp_path, "small.png", (truth * 255).astype(np.uint8))
    load_image(path)  # imports and first-use caches outside the measurement
    tracemalloc.start()
    try:
        load_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, peak


def test_png_limits_and_damage(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(big)
    assert _refused(big, max_pixels=2000 * 2000).reason == "too_large"
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(big.read_bytes()[:200])
    assert _refused(truncated).reason == "corrupt_pixel_data"
    # A few bytes declaring 400 megapixels: past Pillow's own decompression-bomb limit.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(
        ">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b""))
    assert _refused(bomb, max_pixels=10**10).reason == "too_large"


# --- what cannot be a radiograph (issue 16, items 8 and 10) ---------------------------------


def _png(tmp_path: Path, name: str, array: np.ndarray, mode: str | None = None) -> Path:
    path = tmp_path / name
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path, format="PNG")
    return path


def test_pictures_that_cannot_be_radiographs_are_refused(tmp_path: Path,
                                                         truth: np.ndarray) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    cases = {
        "one_pixel": (np.zeros((1, 1), np.uint8), None, "too_small"),
        "narrow": (noise[:, :255], None, "too_small"),
        "constant": (np.full((300, 300), 117, np.uint8), None, "blank_image"),
        "one_bit_noise": (noise, "1", "unsupported_bit_depth"),
        "colour": (np.random.default_rng(1).integers(0, 256, (300, 300, 3), np.uint8), None,
                   "colour_image"),
        "colour_palette": (np.random.default_rng(2).integers(0, 256, (300, 300, 3), np.uint8),
                           "P", "colour_image"),
    }
    for name, (array, mode, reason) in cases.items():
        assert _refused(_png(tmp_path, f"{name}.png", array, mode)).reason == reason, name
    grey = np.round(truth * 255).astype(np.uint8)  # grey in an RGB or palette file is fine
    assert load_image(_png(tmp_path, "grey_palette.png", grey, "P")).pixels.shape == grey.shape


def test_a_non_finite_rescale_is_refused_as_bad_input(tmp_path: Path,
                                                      study: PhantomStudy) -> None:
    for slope in ("NaN", "inf"):
        ds = build_dataset(study, _options())
        ds.RescaleSlope, ds.RescaleIntercept = slope, "0"
        assert _refused(_save(ds, tmp_path / "rescale.dcm")).reason == "non_finite_pixels"


def test_a_zero_rescale_slope_is_refused_as_blank(tmp_path: Path, study: PhantomStudy) -> None:
    ds = build_dataset(study, _options())
    ds.RescaleSlope, ds.RescaleIntercept = "0", "100"
    assert _refused(_save(ds, tmp_path / "flat.dcm")).reason == "blank_image"


def test_a_constant_dicom_is_refused_as_blank(tmp_path: Path, study: PhantomStudy) -> None:
    ds = build_dataset(study, _options())
    ds.PixelData = bytes(len(ds.PixelData))
    assert _refused(_save(ds, tmp_path / "zeros.dcm")).reason == "blank_image"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC (PNG specification 5.3)."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
        ">I", zlib.crc32(kind + payload))


# --- quality, model input, histogram -------------------------------------------------------


def test_quality_flags(tmp_path: Path, study: PhantomStudy) -> None:
    good = load_image(write_study_dicom(study, tmp_path, _options()))
    assert good.quality.poor_reasons == [] and good.quality.dynamic_range > 0.5
    assert (good.quality.width, good.quality.height) == (SIZE, SIZE)
    flat = quality_of(np.full((400, 500), 0.5, dtype=np.float32))
    assert flat.poor_reasons == ["low_contrast"] and flat.dynamic_range == 0.0
    small = quality_of(study.image[:200])
    assert small.poor_reasons == ["small_image"]
    lossy = load_image(write_study_dicom(study, tmp_path / "lossy", _options(JPEG2000)))
    assert lossy.quality.poor_reasons == []  # lossy compression alone is not poor


def test_for_processing_images_are_accepted_but_flagged(tmp_path: Path,
                                                        study: PhantomStudy) -> None:
    ds = build_dataset(study, _options())
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForProcessing
    ds.PresentationIntentType = "FOR PROCESSING"
    decoded = load_image(_save(ds, tmp_path / "processing.dcm"))
    assert decoded.quality.poor_reasons == ["for_processing"]


def test_model_input_with_and_without_clahe(tmp_path: Path, study: PhantomStudy) -> None:
    ds = build_dataset(study, _options())
    ds.set_pixel_data(ds.pixel_array[:, 32:-32], "MONOCHROME2", 12, generate_instance_uid=False)
    decoded = load_image(_save(ds, tmp_path / "narrow.dcm"))
    plain, letterbox = prepare_for_model(decoded, 128)
    enhanced, same = prepare_for_model(decoded, 128, clahe=True)
    assert plain.shape == enhanced.shape == (128, 128) and plain.dtype == np.float32
    assert letterbox == same and letterbox.original_shape == (SIZE, SIZE - 64)
    assert letterbox.pad_x > 0 and np.all(plain[:, : int(letterbox.pad_x)] == 0)
    def local_contrast(image: np.ndarray) -> float:
        return float(np.abs(np.diff(image, axis=1)).mean())
    assert local_contrast(enhanced) > 1.3 * local_contrast(plain)
    assert enhanced.min() >= 0.0 and enhanced.max() <= 1.0


def test_intensity_histogram(truth: np.ndarray) -> None:
    histogram = intensity_histogram(truth, bins=16)
    assert histogram.shape == (16,) and histogram.sum() == pytest.approx(1.0)
    assert intensity_histogram(np.zeros((4, 4)))[0] == 1.0
    with pytest.raises(ValueError):
        intensity_histogram(truth, bins=0)


def test_a_large_jpeg2000_is_decoded_only_as_far_as_the_model_needs(tmp_path: Path) -> None:
    """2,048 px JPEG 2000 at the 256 px resolution level: the same letterboxed geometry
    (boxes map to full pixels) and nearly the same model input as a full decode."""
    from pydicom.uid import JPEG2000Lossless

    from radreport.data.phantoms import generate_study
    from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom

    path = write_study_dicom(generate_study(1000, 1024), tmp_path,
                             DicomOptions("DX", "MONOCHROME1", 12, str(JPEG2000Lossless)))
    full = load_image(path)
    reduced = load_image(path, model_side=256)
    assert not full.reduced and reduced.reduced
    assert reduced.pixels.shape == (256, 256) and reduced.original_shape == (1024, 1024)
    full_input, full_box = prepare_for_model(full, 256)
    reduced_input, reduced_box = prepare_for_model(reduced, 256)
    assert reduced_box == full_box
    assert float(np.abs(full_input - reduced_input).mean()) < 0.02
    assert load_image(path, model_side=1024).pixels.shape == (1024, 1024)  # no level to skip
