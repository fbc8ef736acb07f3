"""Results back to PACS through a persistent outbox: nothing is lost while PACS is down.

For every finished report of a study that came in over DICOM, the SR (TID 1500 with each
sentence's region) and one Secondary Capture overlay per sentence are written to files and
one outbox row per object and destination is committed; only then does sending start. A
failed C-STORE leaves the row pending with a doubled wait (capped), so everything is sent
once PACS answers again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
)
from sqlalchemy import select

from services.common.blobs import BlobStore, write_atomic
from services.common.schemas import Draft, ReportStatus, StructuredFinding
from services.common.store import Store, utcnow
from services.dicom.metrics import EXPORT_FAILURES, EXPORT_QUEUE, EXPORTS_SENT
from services.dicom.records import DicomExport, DicomInstance, DicomStudy
from services.dicom.results import build_overlay_sc, build_report_sr, to_bytes
from services.grounding.render import overlay as full_size_overlay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AET@host:port``."""
        ae_title, _, address = text.partition("@")
        host, _, port = address.rpartition(":")
        if not ae_title or not host or not port.isdigit():
            raise ValueError(f"destination {text!r} is not AET@host:port")
        return cls(ae_title, host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class ResultExporter:
    def __init__(self, store: Store, blobs: BlobStore, outbox: Path,
                 destinations: list[Destination], software_version: str,
                 calling_aet: str = "RADREPORT", retry_s: float = 5.0,
                 max_wait_s: float = 300.0, max_pixels: int = 4096 * 4096) -> None:
        self.store = store
        self.blobs = blobs
        self.outbox = outbox
        self.destinations = destinations
        self.software_version = software_version
        self.calling_aet = calling_aet
        self.retry_s = retry_s
        self.max_wait_s = max_wait_s
        self.max_pixels = max_pixels

    # --- outbox ---------------------------------------------------------------------

    def enqueue_finished(self) -> int:
        """Write the results of newly finished DICOM studies into the outbox."""
        with self.store.session() as session:
            studies = list(session.scalars(select(DicomStudy).where(DicomStudy.state == "queued")))
        queued = 0
        for study in studies:
            report = self.store.get(study.report_id or "")
            if report is None or not ReportStatus(report.status).finished:
                continue
            if report.status == ReportStatus.completed and self.destinations:
                queued += self.write_results(study.report_id or "", report.source)
            with self.store.session() as session:
                row = session.get(DicomStudy, study.study_instance_uid)
                if row is not None:
                    row.state = "reported" if report.status == ReportStatus.completed else \
                        "failed"
        return queued

    def write_results(self, report_id: str, source: dict[str, str]) -> int:
        with self.store.session() as session:
            instance = session.get(DicomInstance, source.get("sop_instance_uid") or "")
        if instance is None:
            raise LookupError("the report's source instance is not on record")
        header = pydicom.dcmread(instance.path, stop_before_pixels=True)
        draft = Draft.model_validate(self.blobs.get_json(report_id, "draft.json"))
        report = self.store.get(report_id)
        findings = [StructuredFinding(**f) for f in (report.result or {}).get(
            "findings_structured", [])] if report else []
        objects = {"sr": to_bytes(build_report_sr(
            header, draft, findings, report_id=report_id, software_version=self.software_version))}
        for i, sentence in enumerate(draft.sentences):
            overlay = np.asarray(Image.open(full_size_overlay(
                self.blobs, report_id, source["blob"], i, self.max_pixels)).convert("RGB"))
            objects[f"sc{i:02d}"] = to_bytes(build_overlay_sc(
                header, overlay, report_id=report_id, sentence_text=sentence.text,
                instance_number=i + 1, manufacturer="radreport",
                software_version=self.software_version))
        for kind, data in objects.items():
            write_atomic(self.outbox / report_id / f"{kind}.dcm", data)
        with self.store.session() as session:
            for kind in objects:
                for destination in self.destinations:
                    exists = session.scalars(select(DicomExport).where(
                        DicomExport.report_id == report_id, DicomExport.kind == kind,
                        DicomExport.destination == str(destination))).first()
                    if exists is None:
                        session.add(DicomExport(
                            report_id=report_id, kind=kind, destination=str(destination),
                            path=str(self.outbox / report_id / f"{kind}.dcm"),
                            status="pending", attempts=0, next_attempt_at=utcnow(),
                            created_at=utcnow()))
        return len(objects) * len(self.destinations)

    # --- sending --------------------------------------------------------------------

    def pending(self) -> list[DicomExport]:
        with self.store.session() as session:
            rows = list(session.scalars(select(DicomExport).where(
                DicomExport.status == "pending").order_by(DicomExport.id)))
        EXPORT_QUEUE.set(len(rows))
        return rows

    def send_due(self) -> int:
        now = utcnow()
        due: dict[str, list[DicomExport]] = {}
        for row in self.pending():
            if row.next_attempt_at.replace(tzinfo=now.tzinfo) <= now:
                due.setdefault(row.destination, []).append(row)
        sent = 0
        for destination, rows in due.items():
            sent += self.send(Destination.parse(destination), rows)
        return sent

    def send(self, destination: Destination, rows: list[DicomExport]) -> int:
        """One association per destination for everything due; statuses per object."""
        ae = AE(ae_title=self.calling_aet)
        for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            for row in rows:
                self.failed(row, "association not established")
            return 0
        sent = 0
        try:
            for row in rows:
                try:
                    status = assoc.send_c_store(pydicom.dcmread(row.path))
                    code = getattr(status, "Status", None)
                except Exception as err:  # a dropped connection: retry later
                    self.failed(row, type(err).__name__)
                    continue
                if code in (0x0000, 0xB000, 0xB007, 0xB006):  # success and warnings
                    self.delivered(row)
                    sent += 1
                else:
                    self.failed(row, f"C-STORE status 0x{code:04X}" if code is not None
                                else "no C-STORE response")
        finally:
            if assoc.is_established:
                assoc.release()
        return sent

    def delivered(self, row: DicomExport) -> None:
        with self.store.session() as session:
            stored = session.get(DicomExport, row.id)
            if stored is not None:
                stored.status, stored.sent_at = "sent", utcnow()
        EXPORTS_SENT.labels("sr" if row.kind == "sr" else "sc").inc()

    def failed(self, row: DicomExport, error: str) -> None:
        EXPORT_FAILURES.inc()
        with self.store.session() as session:
            stored = session.get(DicomExport, row.id)
            if stored is not None:
                stored.attempts += 1
                wait = min(self.retry_s * 2 ** (stored.attempts - 1), self.max_wait_s)
                stored.next_attempt_at = utcnow() + timedelta(seconds=wait)
                stored.last_error = error
        log.warning("export to %s failed (%s); will retry", row.destination, error)
