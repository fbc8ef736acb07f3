"""The last stage: structured findings, review flags, FHIR; then store and notify."""

from __future__ import annotations

from typing import Any

from services.common.metrics import (
    ATTENTION_ENTROPY,
    FINDINGS_STATED,
    OOD_FLAGGED,
    OOD_SCORE,
    QA_DISAGREEMENTS,
    REPORT_LATENCY,
    REPORTS_DRAFTED,
    REPORTS_FINISHED,
    REVIEW_REASON_KINDS,
    REVIEW_REQUIRED,
)
from services.common.queue import StageContext, notify, stage_task
from services.common.schemas import Draft, ImageQuality, ReportStatus
from services.common.store import utcnow
from services.fhir.bundle import report_bundle
from services.fhir.findings import (
    DISAGREEMENT,
    FINDING_LABELS,
    ReviewPolicy,
    agreement,
    head_present,
    reason_kind,
    review_reasons,
    stated_in_text,
    structured_findings,
)
from services.fhir.settings import get_fhir_settings


@stage_task("format", ReportStatus.formatting)
def format_report(ctx: StageContext) -> None:
    report = ctx.report
    settings = get_fhir_settings()
    policy = ReviewPolicy(settings.present_threshold, settings.low_confidence)
    draft = Draft.model_validate(ctx.blobs.get_json(report.id, "draft.json"))
    stored_quality = ctx.blobs.get_json(report.id, "preprocess.json").get("quality")
    quality = ImageQuality(**stored_quality) if stored_quality else None
    findings = structured_findings(draft, policy)
    reasons = review_reasons(draft, quality, policy)
    issued = utcnow()
    ctx.blobs.put_json(report.id, "fhir.json", report_bundle(
        report, draft, findings, ctx.settings.public_base_url, issued))
    result = {
        "findings": draft.findings, "impression": draft.impression,
        "sentences": [{"text": s.text, "section": s.section, "boxes": s.boxes,
                       "labels": s.labels} for s in draft.sentences],
        "findings_structured": [f.model_dump(mode="json") for f in findings],
        "confidence": agreement(draft), "requires_radiologist_review": bool(reasons),
        "review_reasons": reasons, "attention_entropy": draft.attention_entropy,
        "inference_ms": round(draft.inference_ms, 1), **safety_result(draft),
    }
    elapsed_ms = int((issued - report.created_at.replace(tzinfo=issued.tzinfo)).total_seconds()
                     * 1000)
    if ctx.store.complete(report.id, result, elapsed_ms):
        REPORTS_FINISHED.labels(ReportStatus.completed.value).inc()
        REPORT_LATENCY.observe(elapsed_ms / 1000)
        record_clinical_signals(draft, reasons, policy)
        notify(report.id, ReportStatus.completed.value)


def safety_result(draft: Draft) -> dict[str, Any]:
    """The safety net's study-level read-out, as the stored result (and the API) has it."""
    return {"calibrated_confidence": draft.calibrated_confidence,
            "ood_score": draft.ood_score, "ood_threshold": draft.ood_threshold,
            "out_of_distribution": draft.out_of_distribution,
            "uncertain_findings": list(draft.uncertain_findings)}


def record_clinical_signals(draft: Draft, reasons: list[str], policy: ReviewPolicy) -> None:
    """Prevalence per finding from the text and from the head, disagreement, entropy, OOD.

    Labels come from fixed sets only (CheXpert labels, reason kinds), never free text.
    """
    REPORTS_DRAFTED.inc()
    stated, decided = stated_in_text(draft), head_present(draft, policy)
    for label in FINDING_LABELS:
        if label in stated:
            FINDINGS_STATED.labels(label, "text").inc()
        if label in decided:
            FINDINGS_STATED.labels(label, "label_head").inc()
    for reason in reasons:
        kind = reason_kind(reason)
        if kind in REVIEW_REASON_KINDS:
            REVIEW_REQUIRED.labels(kind).inc()
        if kind == DISAGREEMENT:
            QA_DISAGREEMENTS.labels(reason.split(": ")[1].split(" (")[0]).inc()
    if draft.attention_entropy is not None:
        ATTENTION_ENTROPY.observe(draft.attention_entropy)
    if draft.ood_score is not None:
        OOD_SCORE.observe(draft.ood_score)
    if draft.out_of_distribution:
        OOD_FLAGGED.inc()
