"""Stored report rows -> the public schema, with the URLs of its parts."""

from __future__ import annotations

from services.common.schemas import (
    ReportPublic,
    ReportStatus,
    ReportSummary,
    SentencePublic,
    StructuredFinding,
)
from services.common.store import Report

API = "/api/v1"


def report_url(report_id: str) -> str:
    return f"{API}/reports/{report_id}"


def to_public(report: Report) -> ReportPublic:
    base = report_url(report.id)
    result = report.result or {}
    sentences = [SentencePublic(
        index=i, section=s["section"], text=s["text"], boxes=[tuple(b) for b in s["boxes"]],
        labels=s.get("labels", []), grounding_url=f"{base}/grounding#sentence-{i}",
        overlay_url=f"{base}/sentences/{i}/overlay.png") for i, s in enumerate(
            result.get("sentences", []))]
    return ReportPublic(
        report_id=report.id, study_id=report.study_id, status=ReportStatus(report.status),
        status_reason=report.status_reason,
        findings=(report.reviewed_text or result).get("findings"),
        impression=(report.reviewed_text or result).get("impression"), sentences=sentences,
        findings_structured=[StructuredFinding(**f)
                             for f in result.get("findings_structured", [])],
        grounding_map_url=f"{base}/grounding", fhir_url=f"{base}/fhir",
        confidence=result.get("confidence"),
        calibrated_confidence=result.get("calibrated_confidence"),
        ood_score=result.get("ood_score"), ood_threshold=result.get("ood_threshold"),
        out_of_distribution=result.get("out_of_distribution"),
        uncertain_findings=result.get("uncertain_findings", []),
        requires_radiologist_review=result.get("requires_radiologist_review"),
        review_reasons=result.get("review_reasons", []),
        processing_time_ms=report.processing_time_ms,
        stage_timings_ms=report.timings or {},
        review_status=report.review_status or "draft",  # type: ignore[arg-type]
        signed_by=report.signed_by, signed_at=report.signed_at,
        edit_distance=report.edit_distance, model_version=report.model_version,
        created_at=report.created_at, updated_at=report.updated_at)


def to_summary(report: Report) -> ReportSummary:
    return ReportSummary(report_id=report.id, study_id=report.study_id,
                         status=ReportStatus(report.status), model_version=report.model_version,
                         created_at=report.created_at)
