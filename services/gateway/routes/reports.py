"""``/api/v1/reports`` and ``/api/v1/studies``: generate, read, and the report's parts.

Every read and create is audited (who, what, when, from where, outcome). Error bodies carry
our own messages, never header text or other PHI.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.auth import Principal
from services.common.schemas import (
    GenerateRequest,
    PatientMetadata,
    ReportPublic,
    ReportRequestBase,
    ReportStatus,
    ReportSummary,
)
from services.common.store import Report
from services.gateway import actions
from services.gateway.deps import ClientDep, Readers, Requesters, Services, ServicesDep
from services.gateway.ingest import IngestError, check_size
from services.gateway.openapi import AUTHENTICATED, error_answer, error_responses, inline_defs
from services.gateway.views import report_url, to_public, to_summary
from services.grounding.render import grounding_maps, overlay

router = APIRouter(prefix="/api/v1", tags=["reports"],
                   responses=error_responses(*AUTHENTICATED))

GENERATE_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": inline_defs(GenerateRequest.model_json_schema())},
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["study_id", "file"],
        "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "A DICOM (Part 10), PNG or JPEG image"},
            "study_id": {"type": "string"}, "clinical_indication": {"type": "string"},
            "patient_age": {"type": "integer"}, "patient_sex": {"type": "string"},
            "force": {"type": "boolean"}}}}}}}


async def _parse_generate(request: Request, services: Services,
                          ) -> tuple[ReportRequestBase, bytes]:
    """The request's fields and image bytes, from JSON (path or URL) or a multipart upload."""
    content_type = request.headers.get("content-type", "")
    settings = services.settings
    if content_type.startswith("application/json"):
        try:
            body = GenerateRequest.model_validate_json(await request.body())
        except ValidationError as err:
            raise RequestValidationError(err.errors(include_url=False, include_input=False),
                                         ) from err
        if body.image_path is not None:
            data = await actions.image_from_path(services, body.image_path)
        else:
            data = await actions.image_from_url(services, str(body.image_url))
        fields = body.model_dump(exclude={"image_path", "image_url"})
        return ReportRequestBase(**fields), data
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=10)
        except StarletteHTTPException as err:  # its 400 for a malformed form or too many parts
            raise IngestError(422, "the multipart form is malformed or has more than 10 "
                              "fields or 1 file", "bad_form") from err
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise IngestError(422, "multipart upload needs a 'file' part", "missing_file")
        # read(n) allocates n bytes first; the body is capped already (BodyLimits)
        check_size(upload.size or 0, settings.max_upload_bytes)
        data = await upload.read()
        check_size(len(data), settings.max_upload_bytes)
        text = {k: v for k, v in form.items() if isinstance(v, str) and v}
        age, sex = text.get("patient_age"), text.get("patient_sex")
        try:
            return ReportRequestBase(
                study_id=text.get("study_id", ""),
                clinical_indication=text.get("clinical_indication"),
                patient_metadata=PatientMetadata.model_validate({"age": age, "sex": sex})
                if age or sex else None,
                force=text.get("force", "false").lower() in ("1", "true", "yes"),
            ), data
        except ValidationError as err:
            raise RequestValidationError(err.errors(include_url=False, include_input=False),
                                         ) from err
    raise IngestError(415, "send application/json or multipart/form-data", "unsupported_media")


def _refusal(err: IngestError) -> JSONResponse:
    return error_answer(err.status, str(err), err.reason)


def _answer(report: Report) -> JSONResponse:
    public = to_public(report)
    body = public.model_dump(mode="json")
    if report.status == ReportStatus.completed:
        return JSONResponse(body, status_code=status.HTTP_200_OK)
    if report.status == ReportStatus.failed:
        return JSONResponse({"detail": report.status_reason or "report generation failed",
                             **body}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
    return JSONResponse(body, status_code=status.HTTP_202_ACCEPTED,
                        headers={"Location": report_url(report.id)})


@router.post(
    "/reports/generate", openapi_extra=GENERATE_BODY, response_model=ReportPublic,
    responses={202: {"description": "Accepted; poll the Location", "model": ReportPublic},
               **error_responses(404, 408, 413, 415)})
async def generate_report(request: Request, services: ServicesDep, principal: Requesters,
                          client: ClientDep,
                          prefer: Annotated[str | None, Header()] = None) -> JSONResponse:
    """Draft a grounded report for one study.

    Synchronous by default: waits up to the configured time for the report, then answers
    202 with a ``Location``. ``Prefer: respond-async`` answers 202 at once. Resubmitting a
    study returns its existing report for this model unless ``force`` is true.
    """
    try:
        fields, data = await _parse_generate(request, services)
    except IngestError as err:
        await actions.refused(services, principal, client, err)
        return _refusal(err)
    try:
        report, _ = await actions.accept(services, principal, client, fields, data, "api")
    except IngestError as err:
        return _refusal(err)
    wants_async = prefer is not None and "respond-async" in prefer.lower()
    if not wants_async and not ReportStatus(report.status).finished:
        report = await actions.wait_finished(services, report.id, services.settings.sync_wait_s)
    return _answer(report)


async def _readable(services: Services, report_id: str, principal: Principal,
                    client: str | None, what: str, action: str = "read") -> Report:
    """The report if it exists and this caller may see it; 404 alike otherwise (no leak)."""
    report = await actions.readable_report(services, report_id, principal, client, what,
                                           action)
    if report is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no report with this id")
    return report


def _completed(report: Report) -> None:
    if report.status != ReportStatus.completed:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"the report is {report.status}, not completed")


@router.get("/reports/{report_id}", response_model=ReportPublic,
            responses=error_responses(404))
async def get_report(report_id: str, services: ServicesDep, principal: Readers,
                     client: ClientDep) -> ReportPublic:
    return to_public(await _readable(services, report_id, principal, client, "report"))


@router.get("/reports/{report_id}/fhir",
            responses={200: {"content": {"application/fhir+json": {}}},
                       **error_responses(404, 409)})
async def get_report_fhir(report_id: str, services: ServicesDep, principal: Readers,
                          client: ClientDep) -> Response:
    """The report as an HL7 FHIR R4 Bundle: DiagnosticReport, Observations, Provenance."""
    report = await _readable(services, report_id, principal, client, "fhir")
    _completed(report)
    data = await run_in_threadpool(services.blobs.path(report.id, "fhir.json").read_bytes)
    return Response(data, media_type="application/fhir+json")


@router.get("/reports/{report_id}/grounding",
            responses=error_responses(404, 409))
async def get_report_grounding(report_id: str, services: ServicesDep, principal: Readers,
                               client: ClientDep) -> Response:
    """Per-sentence grounding maps over the model input, the letterbox, and boxes."""
    report = await _readable(services, report_id, principal, client, "grounding")
    _completed(report)
    maps = await run_in_threadpool(grounding_maps, services.blobs, report.id)
    return JSONResponse(maps)


@router.get("/reports/{report_id}/sentences/{index}/overlay.png",
            response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}},
                       **error_responses(404, 409)})
async def get_sentence_overlay(report_id: str, index: int, services: ServicesDep,
                               principal: Readers, client: ClientDep,
                               size: Annotated[str, Query(pattern="^(full|preview)$")] = "full",
                               ) -> FileResponse:
    """The sentence's heatmap and boxes on the image, full size or as a preview."""
    report = await _readable(services, report_id, principal, client, "overlay")
    _completed(report)
    try:  # drawn on first request if the grounding stage has not made it, then kept
        path = await run_in_threadpool(overlay, services.blobs, report.id,
                                       report.source["blob"], index,
                                       services.settings.max_pixels, size == "preview")
    except IndexError as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no sentence with this index") from err
    return FileResponse(path, media_type="image/png")


@router.get("/studies/{study_id}/reports", response_model=list[ReportSummary])
async def list_study_reports(study_id: str, services: ServicesDep, principal: Readers,
                             client: ClientDep) -> list[ReportSummary]:
    """Every report of a study, oldest first (forced regenerations included)."""
    return [to_summary(r) for r in await actions.study_reports(services, study_id, principal,
                                                                client)]
