"""The Storage SCP in-process, against dcmtk's storescu/echoscu: storage full answers
out-of-resources, a host off the allow-list is rejected, and a study that is not a chest
radiograph is kept but not processed, with its reason on a report the API can show."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
from radreport.serving.tritonserver import free_port
from services.common.blobs import BlobStore
from services.common.store import Store
from services.dicom.completion import StudyCompleter
from services.dicom.scp import StorageSCP
from services.dicom.settings import DicomSettings

pytestmark = pytest.mark.integration


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make setup` (Debian package dcmtk)")
    return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'reports.db'}")
    store.migrate()
    return store


def _scp(store: Store, root: Path, **settings: object) -> Iterator[StorageSCP]:
    scp = StorageSCP(DicomSettings(port=free_port(), **settings), store, root)  # type: ignore[arg-type]
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()


def _send(scp: StorageSCP, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("storescu"), "-aet", "MODALITY1", "-aec", "RADREPORT",
                           "127.0.0.1", str(scp.settings.port), str(path)],
                          capture_output=True, text=True, timeout=60)


def _study(tmp: Path, **changes: str) -> Path:
    path = write_study_dicom(generate_study(21, 256), tmp,
                             DicomOptions("CR", "MONOCHROME1", 12, str(ExplicitVRLittleEndian)))
    if changes:
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return path


def test_full_storage_answers_out_of_resources(store: Store, tmp_path: Path) -> None:
    for scp in _scp(store, tmp_path / "instances", min_free_bytes=10**18):
        sent = subprocess.run([_tool("storescu"), "-v", "-aet", "MODALITY1", "-aec",
                               "RADREPORT", "127.0.0.1", str(scp.settings.port),
                               str(_study(tmp_path))], capture_output=True, text=True)
        assert sent.returncode != 0
        assert "Refused: OutOfResources" in sent.stdout + sent.stderr
        assert not list((tmp_path / "instances").rglob("*.dcm"))


def test_a_host_off_the_allow_list_is_rejected(store: Store, tmp_path: Path) -> None:
    for scp in _scp(store, tmp_path / "instances", allowed_hosts=["10.9.9.9"]):
        echo = subprocess.run([_tool("echoscu"), "-aet", "MODALITY1", "-aec", "RADREPORT",
                               "127.0.0.1", str(scp.settings.port)],
                              capture_output=True, text=True, timeout=30)
        assert echo.returncode != 0
        assert "Association Rejected" in echo.stdout + echo.stderr


def test_a_non_chest_study_is_stored_but_not_processed(store: Store, tmp_path: Path) -> None:
    for scp in _scp(store, tmp_path / "instances"):
        path = _study(tmp_path, BodyPartExamined="ABDOMEN")
        assert _send(scp, path).returncode == 0
    study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    assert list((tmp_path / "instances" / study_uid).rglob("*.dcm"))  # kept on disk
    completer = StudyCompleter(store, BlobStore(tmp_path / "blobs"), "m:1", idle_s=0.1)
    time.sleep(0.2)
    assert completer.complete_due() == 1
    (report,) = store.list_for_study(study_uid)
    assert report.status == "failed"
    assert report.status_reason == "not processed: the body part examined is not the chest"
    assert completer.complete_due() == 0  # done once
