"""Radiologist review: the worklist, editing, sign-off; who am I; the audit trail (admins).

Signing makes the FHIR DiagnosticReport final; changing a signed report makes it amended.
The edit distance between the AI draft and the signed text is stored and exported (the
report edit rate of our design docs, the product's primary quality measure).
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal, NoReturn

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from rapidfuzz.distance import Levenshtein

from services.common.auth import Principal
from services.common.metrics import EDIT_DISTANCE, REPORTS_SIGNED
from services.common.schemas import ReportPublic, ReportStatus, UtcDatetime
from services.common.store import Report, utcnow
from services.fhir.bundle import rewrite_bundle
from services.fhir.report import FhirReportStatus
from services.gateway import actions
from services.gateway.deps import (
    Admins,
    ClientDep,
    PrincipalDep,
    Radiologists,
    Readers,
    Reviewers,
    Services,
    ServicesDep,
)
from services.gateway.openapi import AUTHENTICATED, WITH_BODY, error_responses
from services.gateway.routes.reports import _completed, _readable
from services.gateway.views import to_public
from services.grounding.render import plain_image

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["review"],
                   responses=error_responses(*AUTHENTICATED))
FHIR_STATUS: dict[str, FhirReportStatus] = {"draft": "preliminary", "signed": "final",
                                            "amended": "amended"}


class Me(BaseModel):
    subject: str
    role: str


class WorklistItem(BaseModel):
    report_id: str
    study_id: str
    status: ReportStatus
    review_status: Literal["draft", "signed", "amended"]
    priority: Literal["critical", "review", "routine"]
    critical_findings: list[str]
    requires_radiologist_review: bool | None
    created_at: UtcDatetime


class ReportText(BaseModel):
    findings: str = Field(max_length=20_000)
    impression: str = Field(max_length=5_000)


class AuditRecord(BaseModel):
    at: UtcDatetime
    actor: str
    action: str
    resource_type: str
    resource_id: str | None
    outcome: str
    client: str | None
    detail: str | None


@router.get("/auth/me", response_model=Me)
async def who_am_i(principal: PrincipalDep) -> Me:
    return Me(subject=principal.subject, role=principal.role.value)


def _priority(report: Report) -> tuple[str, list[str]]:
    result = report.result or {}
    critical = [f["finding"] for f in result.get("findings_structured", [])
                if f.get("is_critical") and f.get("present")]
    if critical:
        return "critical", critical
    return ("review" if result.get("requires_radiologist_review") else "routine"), []


@router.get("/worklist", response_model=list[WorklistItem])
async def worklist(services: ServicesDep, principal: Reviewers,
                   client: ClientDep) -> list[WorklistItem]:
    """Current reports, critical findings first, then those flagged for review."""
    reports = await run_in_threadpool(services.store.worklist)
    await run_in_threadpool(services.store.audit, principal.subject, "read", "worklist", None,
                            "success", client)
    items = []
    for report in reports:
        priority, critical = _priority(report)
        items.append(WorklistItem(
            report_id=report.id, study_id=report.study_id, status=ReportStatus(report.status),
            review_status=report.review_status,  # type: ignore[arg-type]
            priority=priority,  # type: ignore[arg-type]
            critical_findings=critical,
            requires_radiologist_review=(report.result or {}).get(
                "requires_radiologist_review"), created_at=report.created_at))
    order = {"critical": 0, "review": 1, "routine": 2}
    unsigned_first = {"draft": 0, "amended": 1, "signed": 2}
    return sorted(items, key=lambda i: (unsigned_first[i.review_status], order[i.priority]))


def edit_distance(report: Report, text: ReportText) -> float:
    """Normalised Levenshtein distance of the whole text: 0 unchanged, 1 all rewritten."""
    result = report.result or {}
    draft = f"{result.get('findings', '')}\n{result.get('impression', '')}"
    return round(Levenshtein.normalized_distance(draft, f"{text.findings}\n{text.impression}"),
                 4)


async def _review(services: Services, report_id: str, principal: Principal,
                  client: str | None, text: ReportText, sign: bool) -> Report:
    """Save (and with ``sign``, sign) the text, all or nothing.

    Everything is checked before anything is written. The new FHIR bundle is written inside
    the store's transaction, so an error in either leaves both as they were (the bundle is
    put back if the commit itself fails). The outcome is audited once: success, or the
    failure and why; a failure changes nothing else.
    """
    action = "sign" if sign else "edit"
    report = await actions.readable_report(services, report_id, principal, client, "report",
                                           action, audit_success=False)
    if report is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no report with this id")

    async def fail(code: int, why: str) -> NoReturn:
        await run_in_threadpool(services.store.audit, principal.subject, action, "report",
                                report.id, "failure", client, why)
        raise HTTPException(code, why)

    if report.status != ReportStatus.completed:
        await fail(status.HTTP_409_CONFLICT, f"the report is {report.status}, not completed")
    if sign and not text.impression.strip():
        await fail(status.HTTP_422_UNPROCESSABLE_CONTENT,
                   "a report is signed with an impression, and this one is empty")
    distance = edit_distance(report, text)
    try:
        updated = await run_in_threadpool(
            _save_with_bundle, services, report.id, text, principal.subject if sign else None,
            distance)
    except Exception as err:  # nothing was stored, and the bundle is as it was
        log.exception("review of %s failed; nothing changed", report.id)
        await fail(status.HTTP_500_INTERNAL_SERVER_ERROR,
                   f"the review could not be saved ({type(err).__name__}); nothing changed")
    if updated is None:
        await fail(status.HTTP_409_CONFLICT, "the report cannot be reviewed now")
    assert updated is not None  # fail() raised otherwise
    await run_in_threadpool(services.store.audit, principal.subject, action, "report",
                            report.id, "success", client)
    if sign:
        REPORTS_SIGNED.labels("yes" if distance > 0 else "no").inc()
        EDIT_DISTANCE.observe(distance)
    return updated


def _save_with_bundle(services: Services, report_id: str, text: ReportText,
                      signer: str | None, distance: float) -> Report | None:
    """The store's review and the FHIR bundle, together or not at all."""
    bundle = services.blobs.path(report_id, "fhir.json")
    before = bundle.read_bytes() if bundle.is_file() else None

    def write_bundle(updated: Report) -> None:
        rewrite_bundle(updated, services.blobs, services.common.public_base_url, utcnow(),
                       FHIR_STATUS[updated.review_status], text.model_dump())

    try:
        return services.store.save_review(report_id, text.model_dump(), signer, distance,
                                          before_commit=write_bundle)
    except Exception:
        if before is not None:  # the bundle was written, then the commit failed
            services.blobs.put_bytes(report_id, "fhir.json", before)
        raise


@router.put("/reports/{report_id}/text", response_model=ReportPublic,
            responses=error_responses(404, 409, *WITH_BODY))
async def save_text(report_id: str, text: ReportText, services: ServicesDep,
                    principal: Radiologists, client: ClientDep) -> dict[str, object]:
    """Save the radiologist's findings and impression (a signed report becomes amended)."""
    report = await _review(services, report_id, principal, client, text, sign=False)
    return review_view(report)


@router.post("/reports/{report_id}/sign", response_model=ReportPublic,
             responses=error_responses(404, 409, *WITH_BODY))
async def sign_report(report_id: str, text: ReportText, services: ServicesDep,
                      principal: Radiologists, client: ClientDep) -> dict[str, object]:
    """Sign the report with this text: the FHIR DiagnosticReport becomes final."""
    report = await _review(services, report_id, principal, client, text, sign=True)
    return review_view(report)


def review_view(report: Report) -> dict[str, object]:
    return to_public(report).model_dump(mode="json")


@router.get("/reports/{report_id}/image.png", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}, **error_responses(404, 409)})
async def study_image(report_id: str, services: ServicesDep, principal: Readers,
                      client: ClientDep,
                      size: Annotated[str, Query(pattern="^(full|preview)$")] = "preview",
                      ) -> FileResponse:
    """The study image as radiologists see it (the header's window), without heat."""
    report = await _readable(services, report_id, principal, client, "image")
    _completed(report)
    path = await run_in_threadpool(plain_image, services.blobs, report.id,
                                   report.source["blob"], services.settings.max_pixels,
                                   size == "preview")
    return FileResponse(path, media_type="image/png")


@router.get("/audit", response_model=list[AuditRecord])
async def audit_trail(services: ServicesDep, principal: Admins, client: ClientDep,
                      resource_id: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[AuditRecord]:
    """Who did what, newest first (admins only; reading it is audited too)."""
    events = await run_in_threadpool(services.store.audit_events, resource_id, limit)
    await run_in_threadpool(services.store.audit, principal.subject, "read", "audit",
                            resource_id, "success", client)
    return [AuditRecord(at=e.at, actor=e.actor, action=e.action, resource_type=e.resource_type,
                        resource_id=e.resource_id, outcome=e.outcome, client=e.client,
                        detail=e.detail) for e in events]
