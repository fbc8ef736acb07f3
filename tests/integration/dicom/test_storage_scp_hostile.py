"""Hostile C-STOREs against the Storage SCP in-process, sent byte for byte by a pynetdicom
peer (its chunked send does not re-encode the file): a deflate bomb, a dataset without its
SOP class, and a UID whose length swallows the patient's identity. Each gets a failure
status, leaves no file behind, and writes nothing identifying to the log."""

from __future__ import annotations

import io
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from radreport.bench.dicom_fuzz import deflate_bomb
from radreport.serving.tritonserver import free_port
from services.common.store import Store
from services.dicom.metrics import INSTANCES_REJECTED
from services.dicom.scp import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, StorageSCP
from services.dicom.settings import DicomSettings

pytestmark = pytest.mark.integration

CR = UID("1.2.840.10008.5.1.4.1.1.1")
CANARIES = ("CANARYFAMILY", "CANARYGIVEN", "CANARYPID9", "19011231", "CANARYDOC")


def _started_scp(tmp_path: Path, **settings: Any) -> StorageSCP:
    """A storage SCP on a free port with its own SQLite store, started."""
    store = Store(f"sqlite:///{tmp_path / 'reports.db'}")
    store.migrate()
    scp = StorageSCP(DicomSettings(port=free_port(), **settings), store, tmp_path / "instances")
    scp.start()
    return scp


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[StorageSCP]:
    scp = _started_scp(tmp_path, max_instance_bytes=32 * 1024 * 1024)
    try:
        yield scp
    finally:
        scp.stop()


def _send_file(scp: StorageSCP, path: Path, syntax: UID) -> int:
    """C-STORE the file's bytes as they are, over one association."""
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CR, syntax)
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        assoc = ae.associate("127.0.0.1", scp.settings.port, ae_title="RADREPORT")
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    return int(status.Status)


def _header(sop_class: UID | None = CR) -> Dataset:
    ds = Dataset()
    if sop_class is not None:
        ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    return ds


def _write(path: Path, ds: Dataset, syntax: UID, body: bytes) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CR)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    with path.open("wb") as out:
        out.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
        out.write(body)
    return path


def _elements(ds: Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def test_a_deflate_bomb_is_refused_before_it_is_inflated(scp: StorageSCP,
                                                         tmp_path: Path) -> None:
    """1 MB of zeros deflates to 1 KB; 200 MB to ~200 KB: far past the 32 MB limit."""
    path = deflate_bomb(tmp_path / "bomb.dcm", 200_000_000)
    assert path.stat().st_size < 1_000_000
    refused = INSTANCES_REJECTED.labels("too_large")._value.get()
    assert _send_file(scp, path, DeflatedExplicitVRLittleEndian) == OUT_OF_RESOURCES
    assert INSTANCES_REJECTED.labels("too_large")._value.get() == refused + 1
    assert not list(scp.root.rglob("*"))


def test_a_deflated_instance_within_the_limit_is_stored(scp: StorageSCP,
                                                        tmp_path: Path) -> None:
    ds = _header()
    ds.PixelData = bytes(512 * 512 * 2)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(_elements(ds)) + deflater.flush()
    path = _write(tmp_path / "ok.dcm", ds, DeflatedExplicitVRLittleEndian, body)
    assert _send_file(scp, path, DeflatedExplicitVRLittleEndian) == 0x0000
    assert len(list(scp.root.rglob("*.dcm"))) == 1


def test_a_dataset_without_its_sop_class_is_refused_and_not_written(
        scp: StorageSCP, tmp_path: Path) -> None:
    ds = _header(sop_class=None)
    ds.PixelData = bytes(512 * 512 * 2)
    path = _write(tmp_path / "anonymous.dcm", ds, ExplicitVRLittleEndian, _elements(ds))
    assert _send_file(scp, path, ExplicitVRLittleEndian) == CANNOT_UNDERSTAND
    assert not list(scp.root.rglob("*"))


def test_a_uid_that_swallows_the_identity_leaves_no_trace_in_the_log(
        scp: StorageSCP, tmp_path: Path, json_log: io.StringIO) -> None:
    ds = _header()
    ds.StudyInstanceUID = "1.2.3.4"
    ds.ReferringPhysicianName = "CANARYDOC^X"
    ds.PatientName, ds.PatientID = "CANARYFAMILY^CANARYGIVEN", "CANARYPID9"
    ds.PatientBirthDate = "19011231"
    ds.PixelData = bytes(512 * 512 * 2)
    raw = bytearray(_elements(ds))
    at = raw.find(b"\x08\x00\x18\x00UI")  # SOP Instance UID, just before the identity
    raw[at + 6] += 80
    path = _write(tmp_path / "swallowing.dcm", ds, ExplicitVRLittleEndian, bytes(raw))
    assert _send_file(scp, path, ExplicitVRLittleEndian) == CANNOT_UNDERSTAND
    written = json_log.getvalue()
    assert '"logger": "pydicom"' in written  # the library did warn
    assert not any(canary in written for canary in CANARIES)
    assert not list(scp.root.rglob("*"))


def test_a_peer_hoarding_idle_associations_cannot_starve_another(tmp_path: Path) -> None:
    """R6: one host holds its share of slots idle; its next association is rejected, another
    host is still served, and the idle ones are aborted after the network timeout."""
    scp = _started_scp(tmp_path, max_associations=6, max_associations_per_peer=2,
                       network_timeout_s=2.0)

    def associate(source: str) -> Any:
        ae = AE(ae_title="MODALITY1")
        ae.add_requested_context(Verification)
        return ae.associate("127.0.0.1", scp.settings.port, ae_title="RADREPORT",
                            bind_address=(source, 0))

    try:
        hoarded = [associate("127.0.0.1") for _ in range(2)]
        assert all(a.is_established for a in hoarded)
        assert associate("127.0.0.1").is_rejected
        other = associate("127.0.0.2")
        assert other.is_established and int(other.send_c_echo().Status) == 0x0000
        other.release()
        deadline = time.monotonic() + 15
        while any(a.is_established for a in hoarded) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(a.is_established for a in hoarded)  # idle: aborted by the SCP
        again = associate("127.0.0.1")
        while not again.is_established and time.monotonic() < deadline:
            time.sleep(0.5)  # the aborted ones' threads are winding down
            again = associate("127.0.0.1")
        assert again.is_established  # their slots are free again
        again.release()
    finally:
        scp.stop()


def test_health_probes_that_connect_and_close_take_no_slot(tmp_path: Path) -> None:
    """A tcpSocket probe connects and closes without associating; its thread waits out the
    ACSE timeout. Found by the Helm chart under podman: the probes, from the node's address,
    locked that address out until then."""
    scp = _started_scp(tmp_path, max_associations=20, max_associations_per_peer=2,
                       acse_timeout_s=30)
    try:
        for _ in range(5):
            socket.create_connection(("127.0.0.1", scp.settings.port), timeout=2).close()
        time.sleep(0.5)
        ae = AE(ae_title="MODALITY1")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", scp.settings.port, ae_title="RADREPORT")
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0x0000
        assoc.release()
    finally:
        scp.stop()


def test_one_sop_instance_uid_under_two_studies_is_refused_the_second_time(
        scp: StorageSCP, tmp_path: Path) -> None:
    """The second copy would be a file no record points to (found by the chaos fuzzer)."""
    first = _header()
    first.PixelData = bytes(512 * 512 * 2)
    assert _send_file(scp, _write(tmp_path / "a.dcm", first, ExplicitVRLittleEndian,
                                  _elements(first)), ExplicitVRLittleEndian) == 0x0000
    second = first.copy()
    second.StudyInstanceUID = generate_uid()
    assert _send_file(scp, _write(tmp_path / "b.dcm", second, ExplicitVRLittleEndian,
                                  _elements(second)), ExplicitVRLittleEndian) == CANNOT_UNDERSTAND
    assert len(list(scp.root.rglob("*.dcm"))) == 1
