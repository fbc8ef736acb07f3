"""Our schemas -> the gRPC API's messages (``proto/radreport/v1``), and its requests -> ours.

The report message is built from the same ``ReportPublic`` the REST API answers with, so the
two APIs cannot drift apart; grounding maps are quantized to one byte per cell.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from radreport.v1 import report_pb2 as pb
from radreport.v1 import report_service_pb2 as service_pb
from services.common.schemas import (
    Draft,
    PatientMetadata,
    ReportPublic,
    ReportRequestBase,
    ReportSummary,
)

SECTIONS = {"findings": pb.SECTION_FINDINGS, "impression": pb.SECTION_IMPRESSION}
STATUSES = {"queued": pb.REPORT_STATUS_QUEUED, "preprocessing": pb.REPORT_STATUS_PREPROCESSING,
            "inferring": pb.REPORT_STATUS_INFERRING, "formatting": pb.REPORT_STATUS_FORMATTING,
            "completed": pb.REPORT_STATUS_COMPLETED, "failed": pb.REPORT_STATUS_FAILED}
REVIEW = {"draft": pb.REVIEW_STATUS_DRAFT, "signed": pb.REVIEW_STATUS_SIGNED,
          "amended": pb.REVIEW_STATUS_AMENDED}
Stage = service_pb.StatusUpdate.Stage
STAGES = {"queued": Stage.STAGE_QUEUED, "preprocessing": Stage.STAGE_PREPROCESSING,
          "preprocessed": Stage.STAGE_PREPROCESSED, "inferring": Stage.STAGE_INFERRING,
          "formatting": Stage.STAGE_FORMATTING}


class BadRequest(ValueError):
    """A request the API refuses as it stands (INVALID_ARGUMENT); the message is safe."""


def timestamp(value: datetime | float | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    if isinstance(value, datetime):
        stamp.FromDatetime(value)
    else:
        stamp.FromMicroseconds(round(value * 1e6))  # a float holds no more
    return stamp


def grounding_map(heatmap: Any, letterbox: dict[str, Any] | None) -> pb.GroundingMap:
    """A (grid, grid) map as one byte per cell, scaled to its peak."""
    cells = np.asarray(heatmap, dtype=np.float64)
    peak = float(cells.max()) if cells.size else 0.0
    quantized = np.round(cells / peak * 255) if peak > 0 else np.zeros_like(cells)
    box = None
    if letterbox is not None:
        height, width = letterbox["original_shape"]
        box = pb.Letterbox(size=letterbox["size"], scale=letterbox["scale"],
                           pad_x=letterbox["pad_x"], pad_y=letterbox["pad_y"],
                           original_height=height, original_width=width)
    return pb.GroundingMap(grid=int(cells.shape[0]) if cells.ndim == 2 else 0,
                           cells=quantized.astype(np.uint8).tobytes(), max_weight=peak,
                           letterbox=box)


def sentence(index: int, data: dict[str, Any], letterbox: dict[str, Any] | None,
             overlay_url: str = "") -> pb.Sentence:
    """A sentence from a draft sentence (``DraftSentence`` or the grounding blob's)."""
    heatmap = data.get("heatmap")
    return pb.Sentence(
        index=index, section=SECTIONS[data["section"]], text=data["text"],
        boxes=[pb.BoundingBox(x0=b[0], y0=b[1], x1=b[2], y1=b[3]) for b in data["boxes"]],
        labels=data.get("labels", []),
        grounding=grounding_map(heatmap, letterbox) if heatmap is not None else None,
        overlay_url=overlay_url)


def report(public: ReportPublic, draft: Draft | None) -> pb.Report:
    """The REST answer as a message; the ``draft`` adds each sentence's grounding map."""
    heatmaps = [s.heatmap for s in draft.sentences] if draft else []
    letterbox = draft.letterbox.model_dump(mode="json") if draft else None
    sentences = [sentence(s.index, {**s.model_dump(), "heatmap": heatmaps[s.index]
                                    if s.index < len(heatmaps) else None},
                          letterbox, s.overlay_url) for s in public.sentences]
    findings = [pb.StructuredFinding(
        finding=f.finding, present=f.present, confidence=f.confidence,
        calibrated_probability=f.calibrated_probability,
        severity=f.severity or "", is_critical=f.is_critical,
        mentioned_in_text=f.mentioned_in_text, sentence_indices=f.sentence_indices,
        bounding_box=pb.BoundingBox(x0=f.bounding_box[0], y0=f.bounding_box[1],
                                    x1=f.bounding_box[2], y1=f.bounding_box[3])
        if f.bounding_box else None) for f in public.findings_structured]
    return pb.Report(
        report_id=public.report_id, study_id=public.study_id,
        status=STATUSES[public.status.value], status_reason=public.status_reason or "",
        findings=public.findings or "", impression=public.impression or "",
        sentences=sentences, findings_structured=findings, confidence=public.confidence,
        calibrated_confidence=public.calibrated_confidence, ood_score=public.ood_score,
        ood_threshold=public.ood_threshold,
        out_of_distribution=bool(public.out_of_distribution),
        uncertain_findings=public.uncertain_findings,
        requires_radiologist_review=bool(public.requires_radiologist_review),
        review_reasons=public.review_reasons, processing_time_ms=public.processing_time_ms,
        stage_timings_ms=public.stage_timings_ms, review_status=REVIEW[public.review_status],
        signed_by=public.signed_by or "", signed_at=timestamp(public.signed_at),
        edit_distance=public.edit_distance, model_version=public.model_version,
        created_at=timestamp(public.created_at), updated_at=timestamp(public.updated_at),
        fhir_url=public.fhir_url, grounding_map_url=public.grounding_map_url)


def summary(item: ReportSummary) -> pb.ReportSummary:
    return pb.ReportSummary(report_id=item.report_id, study_id=item.study_id,
                            status=STATUSES[item.status.value],
                            model_version=item.model_version,
                            created_at=timestamp(item.created_at))


def request_fields(request: service_pb.GenerateRequest, study_id: str) -> ReportRequestBase:
    """The request's study fields, validated as REST validates its JSON."""
    patient = None
    if request.HasField("patient_metadata"):
        given = request.patient_metadata
        patient = {"age": given.age if given.HasField("age") else None,
                   "sex": given.sex or None}
    try:
        return ReportRequestBase(
            study_id=study_id, clinical_indication=request.clinical_indication or None,
            patient_metadata=PatientMetadata.model_validate(patient) if patient else None,
            subject_reference=request.subject_reference or None,
            encounter_reference=request.encounter_reference or None, force=request.force)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
                             for e in err.errors(include_url=False, include_input=False))
        raise BadRequest(f"invalid request: {problems}") from err
