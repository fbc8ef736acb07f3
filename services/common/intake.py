"""Accepting a study into the pipeline: the one way the gateway and the DICOM gateway do it.

Idempotent per study and model version: the report row is created (or found), the image
written to the blob store, and the chain queued only for a new report.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.exceptions import OperationalError

from services.common import events
from services.common.blobs import BlobStore
from services.common.metrics import STUDIES_INGESTED
from services.common.pipeline import submit
from services.common.queue import redis_client
from services.common.store import Report, Store, new_report_id

EXTENSIONS = {"dicom": "dcm", "png": "png", "jpeg": "jpg"}


class QueueUnavailable(RuntimeError):
    """The broker cannot take the report's chain now; nothing of the report was kept."""


def accept_study(store: Store, blobs: BlobStore, *, study_id: str, model_version: str,
                 request: dict[str, Any], image: bytes, image_format: str,
                 metadata: dict[str, Any], source: str, force: bool = False,
                 ) -> tuple[Report, bool]:
    """The study's report and whether it is new; a new one is queued.

    The image is written before the row that names it, and the row is made whole in one
    transaction. If the store or the broker fails, what was written is removed again
    (QueueUnavailable for the broker): nothing is left accepted that nothing would process.
    """
    existing = None if force else store.find(study_id, model_version)
    if existing is not None:
        return existing, False
    report_id, name = new_report_id(), f"input.{EXTENSIONS[image_format]}"
    blobs.put_bytes(report_id, name, image)
    try:
        report, created = store.create_or_get(
            study_id, model_version, request, force, report_id=report_id,
            source=_source(name, image_format, source, metadata))
    except Exception:
        blobs.remove(report_id)
        raise
    if not created:  # a concurrent request made the study's report first
        blobs.remove(report_id)
        return report, False
    try:
        events.publish(redis_client(), report.id, "status", stage="queued")
        submit(report.id)
    except (redis.RedisError, OperationalError) as err:
        store.discard_unqueued(report.id)
        blobs.remove(report.id)
        raise QueueUnavailable("the report queue (Redis) is unavailable") from err
    STUDIES_INGESTED.labels(source).inc()
    return report, True


def _source(blob: str, image_format: str, via: str, metadata: dict[str, Any],
            ) -> dict[str, Any]:
    """Where the report's input is, and the (non-PHI) UIDs of the image it came from."""
    return {"blob": blob, "format": image_format, "via": via,
            "study_instance_uid": metadata.get("StudyInstanceUID"),
            "series_instance_uid": metadata.get("SeriesInstanceUID"),
            "sop_instance_uid": metadata.get("SOPInstanceUID"),
            "sop_class_uid": metadata.get("SOPClassUID")}
