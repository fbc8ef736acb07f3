"""When a received study is complete, choose its frontal image and queue one report.

A study is complete once no instance has arrived for ``study_idle_s``. Its frontal image is
chosen by View Position (PA before AP; laterals never), then by SOP class (DX For
Presentation, then CR, then DX For Processing), then by arrival. A study we cannot report
on (no frontal view, not a chest radiograph) is kept on disk but not processed, and gets a
failed report with the reason, so the API shows why.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pydicom
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
from sqlalchemy import select

from services.common.blobs import BlobStore
from services.common.intake import accept_study
from services.common.schemas import ReportStatus
from services.common.store import Store, utcnow
from services.dicom.metrics import STUDIES_COMPLETED
from services.dicom.records import DicomInstance, DicomStudy
from services.preprocess.imaging import InputRefused, check_chest_radiograph, dicom_metadata

log = logging.getLogger(__name__)

VIEW_RANK = {"PA": 0, "AP": 1, "": 2}
SOP_RANK = {str(DigitalXRayImageStorageForPresentation): 0,
            str(ComputedRadiographyImageStorage): 1,
            str(DigitalXRayImageStorageForProcessing): 2}
LATERAL_VIEWS = {"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"}


def choose_frontal(instances: list[DicomInstance]) -> DicomInstance | None:
    frontal = [i for i in instances if (i.view_position or "").upper() not in LATERAL_VIEWS]
    if not frontal:
        return None
    return min(frontal, key=lambda i: (VIEW_RANK.get((i.view_position or "").upper(), 3),
                                       SOP_RANK.get(i.sop_class_uid, 3), i.received_at))


class StudyCompleter:
    def __init__(self, store: Store, blobs: BlobStore, model_version: str,
                 idle_s: float) -> None:
        self.store = store
        self.blobs = blobs
        self.model_version = model_version
        self.idle = timedelta(seconds=idle_s)

    def due_studies(self) -> list[str]:
        cutoff = utcnow() - self.idle
        with self.store.session() as session:
            studies = session.scalars(select(DicomStudy).where(DicomStudy.state == "receiving"))
            return [s.study_instance_uid for s in studies
                    if s.last_received_at.replace(tzinfo=cutoff.tzinfo) <= cutoff]

    def complete_due(self) -> int:
        done = 0
        for study_uid in self.due_studies():
            try:
                self.complete(study_uid)
                done += 1
            except Exception:  # keep serving other studies; this one is retried next round
                log.exception("could not complete a study")
        return done

    def complete(self, study_uid: str) -> None:
        with self.store.session() as session:
            instances = list(session.scalars(select(DicomInstance).where(
                DicomInstance.study_instance_uid == study_uid)))
        chosen = choose_frontal(instances)
        if chosen is None:
            self.not_processed(study_uid, "the study has no frontal chest radiograph")
            return
        data = Path(chosen.path).read_bytes()
        header = pydicom.dcmread(chosen.path, stop_before_pixels=True)
        metadata = dicom_metadata(header)
        try:
            check_chest_radiograph(metadata)
        except InputRefused as err:
            self.not_processed(study_uid, str(err))
            return
        report, _ = accept_study(
            self.store, self.blobs, study_id=study_uid, model_version=self.model_version,
            request={"source": "dicom", "calling_aet": chosen.calling_aet,
                     "requested_by": "dicom-gateway"}, image=data,
            image_format="dicom", metadata=metadata, source="dicom")
        self.mark(study_uid, "queued", report.id, None)
        STUDIES_COMPLETED.labels("queued").inc()

    def not_processed(self, study_uid: str, reason: str) -> None:
        report, created = self.store.create_or_get(study_uid, self.model_version,
                                                   {"source": "dicom"})
        if created:
            self.store.set_status(report.id, ReportStatus.failed, f"not processed: {reason}",
                                  failure="refused")
        self.mark(study_uid, "not_processed", report.id, reason)
        STUDIES_COMPLETED.labels("not_processed").inc()

    def mark(self, study_uid: str, state: str, report_id: str, reason: str | None) -> None:
        with self.store.session() as session:
            study = session.get(DicomStudy, study_uid)
            if study is not None:
                study.state, study.report_id, study.reason = state, report_id, reason
