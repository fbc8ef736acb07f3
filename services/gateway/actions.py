"""What the REST and gRPC APIs both do, written once: who is calling, accepting a study,
waiting for or following its report, and reading reports only their callers may see.

Every step audits (who, what, from where, outcome) the same way whichever API was used.
Functions raise ``AuthError``, ``Forbidden`` or ``IngestError``; each API maps them to its
own status codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi.concurrency import run_in_threadpool

from services.common import events
from services.common.auth import AuthError, Principal, Role
from services.common.intake import QueueUnavailable, accept_study
from services.common.metrics import INPUT_REJECTED
from services.common.schemas import ReportRequestBase, ReportStatus
from services.common.store import Report
from services.gateway.fetch import FetchPolicy, fetch_image
from services.gateway.ingest import (
    IngestError,
    check_image,
    check_size,
    read_capped,
    resolve_image_path,
)

if TYPE_CHECKING:  # deps imports this module
    from services.gateway.deps import Services

QUEUE_UNAVAILABLE = "the report queue is unavailable; retry after the Retry-After delay"
READERS = (Role.radiologist, Role.admin, Role.service)
REQUESTERS = (Role.radiologist, Role.service)
RADIOLOGISTS = (Role.radiologist,)
REVIEWERS = (Role.radiologist, Role.admin)
ADMINS = (Role.admin,)


class Forbidden(Exception):
    """An authenticated caller whose role may not do this (HTTP 403, PERMISSION_DENIED)."""


async def authenticate(services: Services, api_key: str | None, authorization: str | None,
                       client: str | None) -> Principal:
    """A bearer token (people) or an API key (machines); a refusal is audited."""
    try:
        if api_key:
            return services.auth.verify_api_key(api_key)
        if authorization and authorization.lower().startswith("bearer "):
            return services.auth.verify_token(authorization[7:].strip())
        message = "authentication required: send a bearer token or an X-API-Key"
    except AuthError as err:
        message = str(err)
    await run_in_threadpool(services.store.audit, "anonymous", "authenticate", "gateway",
                            None, "denied", client, message)
    raise AuthError(message)


async def authorize(services: Services, principal: Principal, roles: tuple[Role, ...],
                    client: str | None, what: str) -> None:
    """Admit only ``roles``; a refusal is audited."""
    if principal.role not in roles:
        await run_in_threadpool(services.store.audit, principal.subject, "access", "gateway",
                                None, "denied", client, f"{principal.role} may not {what}")
        raise Forbidden(f"the {principal.role} role may not do this")


def visible_to(report: Report, principal: Principal) -> bool:
    """Machines see only the reports they asked for; people by role see all."""
    return principal.role != Role.service or report.request.get("requested_by") == principal.subject


async def readable_report(services: Services, report_id: str, principal: Principal,
                          client: str | None, what: str, action: str = "read",
                          audit_success: bool = True) -> Report | None:
    """The report if it exists and this caller may see it; None alike otherwise (no leak).

    Refusals are audited here; with ``audit_success`` false the caller audits the outcome
    of what it then does (an edit that fails is audited as that failure, once)."""
    report = None
    if report_id.startswith("RPT-") and len(report_id) <= 40:
        report = await run_in_threadpool(services.store.get, report_id)
    allowed = report is not None and visible_to(report, principal)
    outcome = "success" if allowed else ("denied" if report else "not_found")
    if outcome != "success" or audit_success:
        await run_in_threadpool(services.store.audit, principal.subject, action, what,
                                report_id if report else None, outcome, client)
    return report if allowed else None


async def _visible_study_reports(services: Services, study_id: str,
                                 principal: Principal) -> list[Report]:
    return [r for r in await run_in_threadpool(services.store.list_for_study, study_id[:128])
            if visible_to(r, principal)]


async def study_reports(services: Services, study_id: str, principal: Principal,
                        client: str | None) -> list[Report]:
    """The study's reports this caller may see, oldest first."""
    reports = await _visible_study_reports(services, study_id, principal)
    await run_in_threadpool(services.store.audit, principal.subject, "read", "study_reports",
                            reports[0].study_id if reports else None,
                            "success" if reports else "not_found", client)
    return reports


async def image_from_path(services: Services, image_path: str) -> bytes:
    path = resolve_image_path(services.settings.image_root, image_path)
    return await run_in_threadpool(read_capped, path, services.settings.max_upload_bytes)


async def image_from_url(services: Services, url: str) -> bytes:
    settings = services.settings
    return await fetch_image(url, FetchPolicy.of(
        settings.image_url_hosts, settings.image_url_schemes,
        settings.image_url_allowed_networks, settings.max_upload_bytes, settings.fetch_timeout_s))


async def stored_study_image(services: Services, study_id: str,
                             principal: Principal) -> tuple[str, bytes]:
    """The input image of the study's latest report this caller may see: (study, bytes)."""
    reports = [r for r in await _visible_study_reports(services, study_id, principal)
               if r.source.get("blob")]
    if not reports:
        raise IngestError(404, "no study with this id holds an image", "study_not_found")
    latest = reports[-1]
    path: Path = services.blobs.path(latest.id, latest.source["blob"])
    return latest.study_id, await run_in_threadpool(path.read_bytes)


async def accept(services: Services, principal: Principal, client: str | None,
                 fields: ReportRequestBase, data: bytes, source: str) -> tuple[Report, bool]:
    """Check the image, then create (or find) the study's report; audited either way.

    With the queue (Redis) away nothing is created: IngestError 503, to be retried."""
    try:
        check_size(len(data), services.settings.max_upload_bytes)
        image_format, metadata = await run_in_threadpool(
            check_image, data, services.settings.max_pixels)
        await _queue_reachable(services)
        report, created = await run_in_threadpool(lambda: accept_study(
            services.store, services.blobs, study_id=fields.study_id,
            model_version=services.model_version,
            request={**fields.model_dump(mode="json", exclude={"force"}),
                     "requested_by": principal.subject}, image=data,
            image_format=image_format, metadata=metadata, source=source, force=fields.force))
    except QueueUnavailable as err:
        unavailable = IngestError(503, QUEUE_UNAVAILABLE, "queue_unavailable")
        await refused(services, principal, client, unavailable)
        raise unavailable from err
    except IngestError as err:
        await refused(services, principal, client, err)
        raise
    await run_in_threadpool(services.store.audit, principal.subject,
                            "create" if created else "read", "report", report.id, "success",
                            client)
    return report, created


async def _queue_reachable(services: Services) -> None:
    """Refuse before writing anything when Redis does not answer (a second guard after
    ``accept_study``'s, which discards what it wrote if queueing itself fails)."""
    try:
        await asyncio.wait_for(services.redis.ping(), timeout=2.0)
    except Exception as err:  # any failure to reach it: unavailable for now
        raise QueueUnavailable("the report queue (Redis) does not answer") from err


async def refused(services: Services, principal: Principal, client: str | None,
                  err: IngestError) -> None:
    """Count and audit a study refused before a report existed."""
    INPUT_REJECTED.labels(err.reason).inc()
    await run_in_threadpool(services.store.audit, principal.subject, "create", "report", None,
                            "refused", client, err.reason)


async def wait_finished(services: Services, report_id: str, timeout_s: float) -> Report:
    """The report once finished, or as it stands after ``timeout_s``: woken by the report's
    own events (``follow``), so a waiter never reads other reports' news."""
    try:
        async for item in follow(services, report_id, timeout_s):
            if isinstance(item, Report):
                return item
    except TimeoutError:
        pass
    report = await run_in_threadpool(services.store.get, report_id)
    assert report is not None
    return report


async def follow(services: Services, report_id: str, timeout_s: float,
                 ) -> AsyncIterator[events.ReportEvent | Report]:
    """A report's events as they happen (each sentence once, in order), then the finished
    report; or, if it is not finished after ``timeout_s``, ``TimeoutError``.

    The events are read from the start, so nothing published before the caller arrived is
    missed; if they are gone (expired, Redis restarted) the stored report still ends it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    after = "0"
    next_sentence = 0
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"the report did not finish in {timeout_s:.0f} s")
        batch = await events.read_events(services.redis, report_id, after,
                                         block_ms=max(1, int(min(1.0, remaining) * 1000)))
        finished = False
        for event in batch:
            after = event.id
            if event.kind == "sentence":
                if event.data["index"] != next_sentence:
                    continue  # a sentence again, from a retried inference
                next_sentence += 1
            finished = finished or event.kind == "finished"
            if event.kind != "finished":
                yield event
        if finished or not batch:  # the end, or quiet: the store has the last word
            report = await run_in_threadpool(services.store.get, report_id)
            assert report is not None
            if ReportStatus(report.status).finished:
                yield report
                return
