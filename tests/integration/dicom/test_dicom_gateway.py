"""The DICOM gateway with real peers: dcmtk's echoscu and storescu send phantom studies,
the reports appear through the API, and Orthanc (a real PACS, on loopback) receives the SR
and the overlays in the source study, also after it was down for a while."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
from radreport.serving.tritonserver import free_port
from radreport.stack import LocalStack, StackConfig
from services.common.store import Store
from services.dicom.records import DicomExport

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CALLING_AET = "MODALITY1"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make setup` (Debian packages dcmtk, orthanc)")
    return path


class Orthanc:
    """A real Orthanc PACS on free loopback ports, started and stopped by the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.http_port, self.dicom_port = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        (root / "orthanc.json").write_text(json.dumps({
            "Name": "radreport-test-pacs", "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [],
            "DicomAlwaysAllowStore": True, "HttpsVerifyPeers": False}))

    def start(self) -> None:
        log = (self.root / "orthanc.log").open("ab")
        self.process = subprocess.Popen([_tool("Orthanc"), str(self.root / "orthanc.json")],
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/system", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError("Orthanc did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def instances_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        found = httpx.post(f"{self.url}/tools/find", timeout=10, json={
            "Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True})
        return list(found.json())

    def instance_file(self, orthanc_id: str) -> bytes:
        return httpx.get(f"{self.url}/instances/{orthanc_id}/file", timeout=10).content


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc"))
    pacs.start()
    yield pacs
    pacs.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc) -> Iterator[LocalStack]:
    config = StackConfig.on_free_ports(tmp_path_factory.mktemp("dicom-stack"))
    config.extra_env = {
        "RADREPORT_DICOM_ALLOWED_CALLING_AETS": json.dumps([CALLING_AET, "STORESCU"]),
        "RADREPORT_DICOM_DESTINATIONS": json.dumps([f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"]),
        "RADREPORT_DICOM_STUDY_IDLE_S": "2", "RADREPORT_DICOM_EXPORT_RETRY_S": "1",
        "RADREPORT_DICOM_EXPORT_MAX_WAIT_S": "2", "RADREPORT_DICOM_POLL_S": "0.5"}
    with LocalStack(config) as running:
        yield running


@pytest.fixture(scope="module")
def store(stack: LocalStack) -> Store:
    return Store(f"sqlite:///{stack.config.data_dir / 'radreport.db'}")


def _study(tmp: Path, seed: int, syntax: str, view: str = "PA") -> Path:
    path = write_study_dicom(generate_study(seed, 384), tmp,
                             DicomOptions("DX", "MONOCHROME2", 12, str(syntax)))
    if view != "PA":  # the same study's other view: a new series and instance
        ds = pydicom.dcmread(path)
        ds.ViewPosition = view
        ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = path.with_name(f"{view}.dcm")
        ds.save_as(path, enforce_file_format=True)
    return path


# storescu proposes uncompressed syntaxes unless told which compressed one to offer
PROPOSE = {str(JPEGLSLossless): ["-xt"], str(JPEG2000Lossless): ["-xv"],
           str(RLELossless): ["-xr"], str(ImplicitVRLittleEndian): ["-xi"]}


def _storescu(stack: LocalStack, *files: Path, aet: str = CALLING_AET,
              ) -> subprocess.CompletedProcess[str]:
    syntax = str(pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return subprocess.run([_tool("storescu"), *PROPOSE.get(syntax, []), "-aet", aet, "-aec",
                           "RADREPORT", "127.0.0.1", str(stack.config.dicom_port),
                           *map(str, files)], capture_output=True, text=True, timeout=60)


def _reports(stack: LocalStack, study_uid: str, timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    reports: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        listed = httpx.get(f"{stack.config.gateway_url}/api/v1/studies/{study_uid}/reports",
                           headers=_auth(stack))
        reports = listed.json() if listed.status_code == 200 else []
        if reports and all(r["status"] in ("completed", "failed") for r in reports):
            return reports
        time.sleep(0.5)
    return reports


def _auth(stack: LocalStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.config.token('radiologist', 'dr-test')}"}


def _wait(condition: Any, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def test_echo(stack: LocalStack) -> None:
    echo = subprocess.run([_tool("echoscu"), "-aet", CALLING_AET, "-aec", "RADREPORT",
                           "127.0.0.1", str(stack.config.dicom_port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    JPEGLSLossless, JPEG2000Lossless, RLELossless])
def test_studies_in_each_syntax_come_back_as_reports_and_results_in_pacs(
        stack: LocalStack, orthanc: Orthanc, tmp_path: Path, syntax: str) -> None:
    path = _study(tmp_path, 40 + len(str(syntax)), syntax)
    sent = _storescu(stack, path)
    assert sent.returncode == 0, sent.stderr
    study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    (report,) = _reports(stack, study_uid)
    assert report["status"] == "completed"
    full = httpx.get(f"{stack.config.gateway_url}/api/v1/reports/{report['report_id']}",
                     headers=_auth(stack)).json()
    assert full["findings"] and full["sentences"]
    # the SR and one overlay per sentence land in the same study in PACS
    expected = 1 + 1 + len(full["sentences"])  # the image itself is not sent back
    assert _wait(lambda: len(orthanc.instances_of_study(study_uid)) >= expected - 1)
    classes = sorted(i["MainDicomTags"].get("SOPInstanceUID", "") and
                     pydicom.dcmread(_bytes_io(orthanc.instance_file(i["ID"])),
                                     stop_before_pixels=True).SOPClassUID.name
                     for i in orthanc.instances_of_study(study_uid))
    assert classes.count("Comprehensive 3D SR Storage") == 1
    assert classes.count("Secondary Capture Image Storage") == len(full["sentences"])


def _bytes_io(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


def test_results_wait_for_pacs_and_all_arrive_when_it_is_back(
        stack: LocalStack, orthanc: Orthanc, store: Store, tmp_path: Path) -> None:
    orthanc.stop()
    try:
        paths = [_study(tmp_path / str(i), 70 + i, ExplicitVRLittleEndian) for i in range(2)]
        assert _storescu(stack, *paths).returncode == 0
        uids = [str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in paths]
        for uid in uids:
            assert [r["status"] for r in _reports(stack, uid)] == ["completed"]

        def failed_once() -> bool:
            with store.session() as session:
                rows = session.query(DicomExport).all()
                return bool(rows) and any(r.attempts > 0 and r.status == "pending" for r in rows)
        assert _wait(failed_once), "the outbox never tried the stopped PACS"
    finally:
        orthanc.start()

    def all_sent() -> bool:
        with store.session() as session:
            return all(r.status == "sent" for r in session.query(DicomExport).all())
    assert _wait(all_sent, 90)
    for uid in uids:
        assert len(orthanc.instances_of_study(uid)) >= 2


def test_a_disallowed_calling_ae_title_is_rejected(stack: LocalStack, tmp_path: Path) -> None:
    echo = subprocess.run([_tool("echoscu"), "-aet", "INTRUDER", "-aec", "RADREPORT",
                           "127.0.0.1", str(stack.config.dicom_port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode != 0
    assert "Calling AE Title Not Recognized" in echo.stderr + echo.stdout


def test_an_unsupported_sop_class_is_refused_at_negotiation(stack: LocalStack,
                                                            tmp_path: Path) -> None:
    path = _study(tmp_path, 90, ExplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT
    ds.Modality = "CT"
    ds.save_as(path, enforce_file_format=True)
    sent = _storescu(stack, path)
    assert sent.returncode != 0
    assert "no presentation context" in (sent.stderr + sent.stdout).lower()


def _send_dataset(stack: LocalStack, payload: Any) -> int:
    ae = AE(ae_title=CALLING_AET)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", stack.config.dicom_port, ae_title="RADREPORT")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(payload)
        return int(status.Status)
    finally:
        assoc.release()


def test_a_truncated_or_malformed_instance_gets_a_failure_status(stack: LocalStack,
                                                                 tmp_path: Path) -> None:
    path = _study(tmp_path, 91, ExplicitVRLittleEndian)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) // 3])
    assert _send_dataset(stack, truncated) == 0xC210
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = "../../etc/passwd"  # header text must never become a path
    assert _send_dataset(stack, ds) == 0xC210
    echo = subprocess.run([_tool("echoscu"), "-aet", CALLING_AET, "-aec", "RADREPORT",
                           "127.0.0.1", str(stack.config.dicom_port)], capture_output=True)
    assert echo.returncode == 0  # still serving


def test_a_duplicate_and_a_study_over_two_associations_give_one_report(
        stack: LocalStack, store: Store, tmp_path: Path) -> None:
    frontal = _study(tmp_path, 95, ExplicitVRLittleEndian)
    lateral = _study(tmp_path, 95, ExplicitVRLittleEndian, view="LL")
    assert _storescu(stack, lateral).returncode == 0
    assert _storescu(stack, frontal).returncode == 0
    assert _storescu(stack, frontal).returncode == 0  # the same instance again
    study_uid = str(pydicom.dcmread(frontal, stop_before_pixels=True).StudyInstanceUID)
    (report,) = _reports(stack, study_uid)
    assert report["status"] == "completed"
    stored = store.get(report["report_id"])
    assert stored is not None
    frontal_uid = str(pydicom.dcmread(frontal, stop_before_pixels=True).SOPInstanceUID)
    assert stored.source["sop_instance_uid"] == frontal_uid  # the frontal view was chosen
    files = list((stack.config.data_dir / "dicom" / "instances" / study_uid).rglob("*.dcm"))
    assert len(files) == 2  # frontal once, lateral once
