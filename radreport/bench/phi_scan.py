"""R14: no patient data outside the images and the reports made for the PACS.

Canary values are planted in every identifying attribute of studies sent every way the stack
takes them (REST upload, a dcmtk push, a hostile push whose UID swallows the identity, a
deflated push, a study refused as not a chest). Then every log file, every /metrics endpoint
and every Redis key and value are scanned for them. Used by the R14 test and ``bench chaos``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import redis
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from radreport.bench.load import wait_study_reported
from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
from radreport.stack import LocalStack
from services.common.store import Store

IDENTITY = {"PatientName": "CANARYFAMILY^CANARYGIVEN^CANARYMIDDLE",
            "PatientID": "CANARYPID4711", "IssuerOfPatientID": "CANARYISSUER",
            "OtherPatientIDs": "CANARYOTHERID", "PatientBirthDate": "19020304",
            "AccessionNumber": "CANARYACC0815", "ReferringPhysicianName": "CANARYREFDOC^X",
            "PatientAddress": "CANARYSTREET 1", "InstitutionName": "CANARYHOSPITAL"}
CANARIES = ("CANARY", "19020304", "1902-03-04", "04/03/1902", "03/04/1902", "04.03.1902")



@dataclass
class PhiScan:
    scanned_bytes: int
    places: int  # log files, metrics endpoints, Redis
    leaks: dict[str, str]  # place -> the canary found there
    pushed_reported: bool  # the canary study pushed by storescu became a completed report


def canary_study(folder: Path, seed: int, **changes: str) -> Path:
    path = write_study_dicom(generate_study(seed, 384), folder, DicomOptions(
        "CR", "MONOCHROME1", 12, str(ExplicitVRLittleEndian)))
    ds = pydicom.dcmread(path)
    for keyword, value in {**IDENTITY, **changes}.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return path


def _swallowing(path: Path) -> Path:
    """The SOP Instance UID's length runs on to Patient's Sex (0010,0040): its value holds
    the whole identity, and the elements after it still parse."""
    raw = bytearray(path.read_bytes())
    at = raw.find(b"\x08\x00\x18\x00UI", 132)
    end = raw.find(b"\x10\x00\x40\x00CS", at)
    if not 0 < at < end:
        raise ValueError("no SOP Instance UID before Patient's Sex")
    raw[at + 6 : at + 8] = (end - at - 8).to_bytes(2, "little")
    bad = path.with_name("swallowing.dcm")
    bad.write_bytes(bytes(raw))
    return bad


def _deflated(path: Path) -> Path:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = path.with_name("deflated.dcm")
    ds.save_as(out, enforce_file_format=True)
    return out


def _push(stack: LocalStack, path: Path, syntax: str) -> None:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(str(ds.file_meta.MediaStorageSOPClassUID), syntax)
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        assoc = ae.associate("127.0.0.1", stack.config.dicom_port, ae_title="RADREPORT")
        if not assoc.is_established:
            raise RuntimeError("the DICOM gateway refused the association")
        assoc.send_c_store(path)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked


def _redis_value(client: redis.Redis, key: bytes) -> object:
    kind = client.type(key).decode()  # type: ignore[union-attr]
    if kind == "string":
        return client.get(key)
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "hash":
        return client.hgetall(key)
    if kind == "set":
        return client.smembers(key)
    if kind == "zset":
        return client.zrange(key, 0, -1)
    if kind == "stream":
        return client.xrange(key)
    return kind


def _redis_text(client: redis.Redis) -> str:
    """Every key and value, whatever its type."""
    return "\n".join(f"{key!r} {_redis_value(client, key)!r}"
                     for key in client.scan_iter(count=1000))


def plant_and_scan(stack: LocalStack, folder: Path, timeout_s: float = 120) -> PhiScan:
    """Send the canary studies every way, wait for the pushed one's report, then scan."""
    token = stack.config.token("service", "phi-ris")
    upload = canary_study(folder / "rest", 31)
    answer = httpx.post(f"{stack.config.gateway_url}/api/v1/reports/generate", timeout=120,
                        headers={"Authorization": f"Bearer {token}"},
                        data={"study_id": "PHI-REST-1"},
                        files={"file": ("s.dcm", upload.read_bytes())})
    answer.raise_for_status()
    pushed = canary_study(folder / "push", 32)
    storescu = shutil.which("storescu") or "storescu"
    subprocess.run([storescu, "-aec", "RADREPORT", "127.0.0.1", str(stack.config.dicom_port),
                    str(pushed)], check=True, capture_output=True, timeout=60)
    _push(stack, _swallowing(canary_study(folder / "bad", 33)), ExplicitVRLittleEndian)
    _push(stack, _deflated(canary_study(folder / "deflate", 34)),
          DeflatedExplicitVRLittleEndian)
    refused = canary_study(folder / "abdomen", 35, BodyPartExamined="ABDOMEN")
    subprocess.run([storescu, "-aec", "RADREPORT", "127.0.0.1", str(stack.config.dicom_port),
                    str(refused)], check=True, capture_output=True, timeout=60)

    store = Store(stack.config.extra_env.get(
        "RADREPORT_DATABASE_URL", f"sqlite:///{stack.config.data_dir / 'radreport.db'}"))
    pushed_uid = str(pydicom.dcmread(pushed, stop_before_pixels=True).StudyInstanceUID)
    reported = [r.status for r in wait_study_reported(store, pushed_uid, timeout_s)
                ] == ["completed"]
    time.sleep(2)  # the grounding stage and the exporter write their last lines

    scanned = {f"log {p.name}": p.read_text(errors="replace")
               for p in stack.logs.glob("*.log")}
    ports = {"gateway": stack.config.gateway_port, "dicom": stack.config.dicom_metrics_port,
             **stack.config.worker_metrics_ports}
    for name, port in ports.items():
        scanned[f"metrics {name}"] = httpx.get(f"http://127.0.0.1:{port}/metrics",
                                               timeout=30).text
    scanned["redis"] = _redis_text(redis.Redis.from_url(stack.config.redis_url))
    leaks = {where: canary for where, text in scanned.items() for canary in CANARIES
             if canary in text}
    return PhiScan(sum(len(t) for t in scanned.values()), len(scanned), leaks, reported)
