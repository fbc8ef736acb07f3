"""What the gateway refuses before a report exists: paths out of the image root (also via
symlinks), unknown formats, and DICOM that is not a chest radiograph or is too large."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, build_dataset
from services.gateway.ingest import IngestError, check_image, resolve_image_path
from services.preprocess.imaging import sniff_format


@pytest.fixture(scope="module")
def dicom_bytes() -> bytes:
    ds = build_dataset(generate_study(3, 256),
                       DicomOptions("CR", "MONOCHROME2", 12, str(ExplicitVRLittleEndian)))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_paths_resolve_only_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "ward").mkdir(parents=True)
    (root / "ward" / "a.dcm").write_bytes(b"x")
    (tmp_path / "secret.dcm").write_bytes(b"x")
    (root / "escape.dcm").symlink_to(tmp_path / "secret.dcm")
    assert resolve_image_path(root, "ward/a.dcm") == (root / "ward" / "a.dcm").resolve()
    assert resolve_image_path(root, str(root / "ward" / "a.dcm")).name == "a.dcm"
    for bad in ("../secret.dcm", "ward/../../secret.dcm", str(tmp_path / "secret.dcm"),
                "escape.dcm", "/etc/passwd"):
        with pytest.raises(IngestError) as refused:
            resolve_image_path(root, bad)
        assert refused.value.status == 403, bad
    with pytest.raises(IngestError) as missing:
        resolve_image_path(root, "ward/none.dcm")
    assert missing.value.status == 404
    with pytest.raises(IngestError, match="image_url"):
        resolve_image_path(root, "s3://bucket/study.dcm")


def test_unresolvable_paths_are_bad_requests_not_server_errors(tmp_path: Path) -> None:
    """A symlink loop, a NUL byte and a name component too long for the file system each
    get a 422 with a message that does not repeat the path."""
    root = tmp_path / "images"
    root.mkdir()
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    for bad in ("loop-a", "ward/a\x00.dcm", "x" * 300 + ".dcm"):
        with pytest.raises(IngestError) as refused:
            resolve_image_path(root, bad)
        assert refused.value.status == 422 and refused.value.reason == "bad_path", bad
        assert bad not in str(refused.value)


def test_formats_are_sniffed_from_content(dicom_bytes: bytes) -> None:
    assert sniff_format(dicom_bytes) == "dicom"
    assert sniff_format(b"\x89PNG\r\n\x1a\n" + b"\0" * 10) == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0" + b"\0" * 10) == "jpeg"
    assert sniff_format(b"GIF89a" + b"\0" * 200) is None


def test_a_chest_radiograph_passes_with_its_uids(dicom_bytes: bytes) -> None:
    image_format, metadata = check_image(dicom_bytes, max_pixels=4096 * 4096)
    assert image_format == "dicom"
    assert str(metadata["StudyInstanceUID"]).startswith("2.25.")
    assert "PatientName" not in metadata and "PatientID" not in metadata


@pytest.mark.parametrize(("change", "status", "reason"), [
    ({"Modality": "CT"}, 422, "wrong_modality"),
    ({"BodyPartExamined": "ABDOMEN"}, 422, "not_chest"),
    ({"Rows": 8192, "Columns": 8192}, 413, "too_large"),
])
def test_what_is_not_a_chest_radiograph_is_refused_unread(
        dicom_bytes: bytes, change: dict[str, object], status: int, reason: str) -> None:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes))
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(IngestError) as refused:
        check_image(buffer.getvalue(), max_pixels=4096 * 4096)
    assert (refused.value.status, refused.value.reason) == (status, reason)
    assert "PHANTOM" not in str(refused.value)


def test_truncated_and_unknown_files_are_refused(dicom_bytes: bytes) -> None:
    with pytest.raises(IngestError) as truncated:
        check_image(dicom_bytes[:300], max_pixels=10**8)
    assert truncated.value.status == 422
    with pytest.raises(IngestError) as unknown:
        check_image(b"hello" * 100, max_pixels=10**8)
    assert unknown.value.status == 415
