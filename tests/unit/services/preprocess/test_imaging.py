"""Decoding every transfer syntax we accept, both photometric interpretations, PNG and
JPEG, to the image the model was trained on; refusing, before decoding, what is not a
chest radiograph or too large. dcmtk's own encoders make the JPEG process 1 and 14 files."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, build_dataset, write_study_dicom
from services.preprocess.imaging import (
    InputRefused,
    intensity_histogram,
    load_image,
    prepare_for_model,
)

SIZE = 256


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return generate_study(5, SIZE).image.astype(np.float32)


def _write(tmp: Path, syntax: str, photometric: str = "MONOCHROME2", bits: int = 12,
           modality: str = "DX") -> Path:
    return write_study_dicom(generate_study(5, SIZE), tmp,
                             DicomOptions(modality, photometric, bits, str(syntax)))


def _dcmtk(tool: str, *args: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} (Debian package dcmtk) is not installed: run `make setup`")
    subprocess.run([tool, *args], check=True, capture_output=True)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    RLELossless, JPEGLSLossless, JPEG2000Lossless])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_lossless_syntaxes_decode_to_the_training_image(tmp_path: Path, truth: np.ndarray,
                                                        syntax: str, photometric: str) -> None:
    decoded = load_image(_write(tmp_path, syntax, photometric))
    assert decoded.source_format == "dicom"
    assert np.abs(decoded.pixels - truth).max() <= 1 / 4095 + 1e-6  # 12-bit rounding only
    assert decoded.metadata["TransferSyntaxUID"] == str(syntax)


def test_lossy_jpeg2000_is_close(tmp_path: Path, truth: np.ndarray) -> None:
    decoded = load_image(_write(tmp_path, JPEG2000))
    assert np.abs(decoded.pixels - truth).mean() < 0.01


def test_deflated_and_dcmtk_jpeg_processes(tmp_path: Path, truth: np.ndarray) -> None:
    source = _write(tmp_path, ExplicitVRLittleEndian)
    ds = pydicom.dcmread(source)
    deflated = tmp_path / "deflated.dcm"
    ds.save_as(deflated, implicit_vr=False, little_endian=True, enforce_file_format=True)
    ds = pydicom.dcmread(deflated)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(deflated, enforce_file_format=True)
    assert np.abs(load_image(deflated).pixels - truth).max() <= 1 / 4095 + 1e-6
    lossless = tmp_path / "jpeg-sv1.dcm"
    _dcmtk("dcmcjpeg", "+e1", str(source), str(lossless))  # JPEG Lossless, SV1 (process 14)
    assert pydicom.dcmread(lossless).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    assert np.abs(load_image(lossless).pixels - truth).max() <= 1 / 4095 + 1e-6
    eight_bit = _write(tmp_path / "8", ExplicitVRLittleEndian, bits=12)
    baseline = tmp_path / "jpeg-baseline.dcm"
    _dcmtk("dcmcjpeg", "+eb", str(eight_bit), str(baseline))  # process 1, rescaled
    assert pydicom.dcmread(baseline).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    decoded = load_image(baseline)
    assert decoded.pixels.shape == truth.shape
    assert np.corrcoef(decoded.display.ravel(), truth.ravel())[0, 1] > 0.98


def test_display_view_applies_the_header_window(tmp_path: Path, truth: np.ndarray) -> None:
    decoded = load_image(_write(tmp_path, ExplicitVRLittleEndian, "MONOCHROME1"))
    assert decoded.display.shape == truth.shape
    assert decoded.display.min() == 0.0 and decoded.display.max() == 1.0
    assert np.corrcoef(decoded.display.ravel(), truth.ravel())[0, 1] > 0.9  # bone bright


@pytest.mark.parametrize(("change", "reason"), [
    ({"Modality": "CT"}, "wrong_modality"),
    ({"BodyPartExamined": "ABDOMEN"}, "not_chest"),
])
def test_not_a_chest_radiograph_is_refused(tmp_path: Path, change: dict[str, str],
                                           reason: str) -> None:
    ds = pydicom.dcmread(_write(tmp_path, ExplicitVRLittleEndian))
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    path = tmp_path / "changed.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputRefused) as refused:
        load_image(path)
    assert refused.value.reason == reason
    assert "PHANTOM" not in str(refused.value)


def test_rgb_is_refused(tmp_path: Path) -> None:
    ds = build_dataset(generate_study(5, SIZE),
                       DicomOptions("DX", "MONOCHROME2", 12, str(ExplicitVRLittleEndian)))
    ds.PhotometricInterpretation = "RGB"
    path = tmp_path / "rgb.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputRefused, match="not grayscale"):
        load_image(path)


def test_a_huge_declared_size_is_refused_before_decoding(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_write(tmp_path, ExplicitVRLittleEndian))
    ds.Rows = ds.Columns = 60000  # 3.6 gigapixels declared, a few kB of pixel data
    path = tmp_path / "huge.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputRefused) as refused:
        load_image(path)
    assert refused.value.reason == "too_large"


def test_truncated_and_random_files_are_refused(tmp_path: Path) -> None:
    data = _write(tmp_path, ExplicitVRLittleEndian).read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputRefused) as refused:
        load_image(truncated)
    assert refused.value.reason == "corrupt_pixel_data"
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputRefused) as unknown:
        load_image(noise)
    assert unknown.value.reason == "not_dicom_or_image"


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_png_and_jpeg(tmp_path: Path, truth: np.ndarray, mode: str) -> None:
    scale = 255 if mode == "L" else 65535
    values = np.round(truth * scale).astype(np.uint8 if mode == "L" else np.uint16)
    png = tmp_path / "study.png"
    Image.fromarray(values).save(png)
    decoded = load_image(png)
    assert decoded.source_format == "png"
    assert np.abs(decoded.pixels - truth).max() <= 1 / scale + 1e-6
    jpeg = tmp_path / "study.jpg"
    Image.fromarray(np.round(truth * 255).astype(np.uint8)).save(jpeg, quality=95)
    assert np.abs(load_image(jpeg).pixels - truth).mean() < 0.01


def test_a_png_over_the_pixel_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(path)
    with pytest.raises(InputRefused) as refused:
        load_image(path, max_pixels=2000 * 2000)
    assert refused.value.reason == "too_large"


def test_model_input_clahe_and_quality(tmp_path: Path, truth: np.ndarray) -> None:
    decoded = load_image(_write(tmp_path, ExplicitVRLittleEndian))
    plain, letterbox = prepare_for_model(decoded, 256)
    enhanced, _ = prepare_for_model(decoded, 256, clahe=True)
    assert plain.shape == enhanced.shape == (256, 256)
    assert letterbox.original_shape == truth.shape
    assert not np.allclose(plain, enhanced)
    assert decoded.quality is not None and decoded.quality.poor_reasons == []
    flat = load_image(_png(tmp_path, np.full((300, 300), 0.5)))
    assert flat.quality is not None and "low_contrast" in flat.quality.poor_reasons
    assert intensity_histogram(truth).sum() == pytest.approx(1.0)


def _png(tmp: Path, image: np.ndarray) -> Path:
    path = tmp / "flat.png"
    buffer = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path
