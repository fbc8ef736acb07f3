"""The gRPC API (``proto/radreport/v1``), served by the gateway beside REST, on its own port.

Same callers, roles, audit and inputs as REST (``services.gateway.actions``). The server also
offers the standard health service (SERVING while Redis, Triton and the store answer) and
server reflection, and caps message sizes and concurrent calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeAlias

import grpc
from fastapi.concurrency import run_in_threadpool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.exc import OperationalError

from radreport.v1 import report_pb2 as pb
from radreport.v1 import report_service_pb2 as service_pb
from radreport.v1 import report_service_pb2_grpc as service_grpc
from services.common.auth import AuthError, Principal, Role
from services.common.events import ReportEvent
from services.common.metrics import FIRST_SENTENCE, GRPC_LATENCY, GRPC_REQUESTS
from services.common.schemas import Draft, ReportStatus
from services.common.store import Report
from services.gateway import actions
from services.gateway import grpc_messages as messages
from services.gateway.deps import Services
from services.gateway.ingest import IngestError
from services.gateway.routes.health import readiness_checks
from services.gateway.views import to_public, to_summary

log = logging.getLogger(__name__)

SERVICE_NAME = service_pb.DESCRIPTOR.services_by_name["ReportService"].full_name
# HTTP statuses of our ingest refusals -> gRPC codes
INGEST_CODES = {403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
                413: grpc.StatusCode.INVALID_ARGUMENT, 415: grpc.StatusCode.INVALID_ARGUMENT,
                422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}
REPORT_ID_KEY = "radreport-report-id"  # trailing metadata of a call that made a report
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def client_of(context: Context) -> str | None:
    """The caller's address without its port ("ipv4:10.0.0.1:5123" -> "10.0.0.1")."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")[:64]
    return kind or None


class ReportService(service_grpc.ReportServiceServicer):
    def __init__(self, services: Services) -> None:
        self.services = services

    async def _caller(self, context: Context, roles: tuple[Role, ...],
                      what: str) -> tuple[Principal, str | None]:
        metadata = {k: v for k, v in context.invocation_metadata() or ()
                    if isinstance(v, str)}
        client = client_of(context)
        try:
            principal = await actions.authenticate(
                self.services, metadata.get("x-api-key"), metadata.get("authorization"), client)
            await actions.authorize(self.services, principal, roles, client, what)
        except AuthError as err:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(err))
        except actions.Forbidden as err:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(err))
        return principal, client

    async def _accept(self, request: service_pb.GenerateRequest, context: Context,
                      principal: Principal, client: str | None) -> tuple[Report, bool]:
        """The request's study accepted (or found): as REST's generate, refusals audited."""
        services = self.services
        source = request.WhichOneof("image")
        try:
            study_id = request.study_id
            if source == "study_reference":
                if request.study_id and request.study_id != request.study_reference:
                    raise messages.BadRequest("study_id and study_reference name different "
                                              "studies; give study_reference alone")
                study_id, data = await actions.stored_study_image(
                    services, request.study_reference, principal)
            elif source == "image_path":
                data = await actions.image_from_path(services, request.image_path)
            elif source == "image_url":
                data = await actions.image_from_url(services, request.image_url)
            elif source == "image_data":
                data = request.image_data
            else:
                raise messages.BadRequest("give the image: one of image_data, image_path, "
                                          "image_url or study_reference")
            fields = messages.request_fields(request, study_id)
        except messages.BadRequest as err:
            await actions.refused(services, principal, client,
                                  IngestError(422, str(err), "bad_request"))
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except IngestError as err:
            await actions.refused(services, principal, client, err)
            await _abort_ingest(context, err)
        try:
            return await actions.accept(services, principal, client, fields, data, "grpc")
        except IngestError as err:
            await _abort_ingest(context, err)

    async def _message(self, report: Report) -> pb.Report:
        draft = None
        if report.status == ReportStatus.completed:  # its maps at the model's precision
            draft = Draft.model_validate(await run_in_threadpool(
                self.services.blobs.get_json, report.id, "draft.json"))
        return messages.report(to_public(report), draft)

    async def Generate(self, request: service_pb.GenerateRequest,
                       context: Context) -> pb.Report:
        principal, client = await self._caller(context, actions.REQUESTERS, "generate reports")
        report, _ = await self._accept(request, context, principal, client)
        context.set_trailing_metadata(((REPORT_ID_KEY, report.id),))
        if not ReportStatus(report.status).finished:
            report = await actions.wait_finished(self.services, report.id,
                                                 _time_left(context, self.services))
        if not ReportStatus(report.status).finished:
            await _abort_unfinished(context, report)
        if report.status == ReportStatus.failed:
            await _abort_failed(context, report)
        return await self._message(report)

    async def GenerateStream(self, request: service_pb.GenerateRequest,
                             context: Context) -> AsyncIterator[service_pb.GenerateEvent]:
        principal, client = await self._caller(context, actions.REQUESTERS, "generate reports")
        report, created = await self._accept(request, context, principal, client)
        context.set_trailing_metadata(((REPORT_ID_KEY, report.id),))
        started = time.monotonic()
        yield service_pb.GenerateEvent(
            report_id=report.id, time=messages.timestamp(report.created_at),
            status=service_pb.StatusUpdate(stage=messages.STAGES["queued"],
                                           existing_report=not created))
        sent = 0
        final = report if ReportStatus(report.status).finished else None
        if final is None:
            try:
                async for item in actions.follow(self.services, report.id,
                                                 _time_left(context, self.services)):
                    if isinstance(item, Report):
                        final = item
                        break
                    event = _event(report.id, item)
                    if event is not None:
                        if event.HasField("sentence"):
                            if sent == 0:
                                FIRST_SENTENCE.observe(time.monotonic() - started)
                            sent += 1
                        yield event
            except TimeoutError:
                await _abort_unfinished(context, report)
        assert final is not None
        message = await self._message(final)
        for missed in message.sentences[sent:]:  # a finished report, or events gone
            yield service_pb.GenerateEvent(report_id=report.id,
                                           time=messages.timestamp(final.completed_at),
                                           sentence=missed)
        yield service_pb.GenerateEvent(report_id=report.id,
                                       time=messages.timestamp(final.updated_at),
                                       report=message)
        if final.status == ReportStatus.failed:
            await _abort_failed(context, final)

    async def GetReport(self, request: service_pb.GetReportRequest,
                        context: Context) -> pb.Report:
        principal, client = await self._caller(context, actions.READERS, "read reports")
        report = await actions.readable_report(self.services, request.report_id, principal,
                                               client, "report")
        if report is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, "no report with this id")
        return await self._message(report)

    async def ListStudyReports(self, request: service_pb.ListStudyReportsRequest,
                               context: Context) -> service_pb.ListStudyReportsResponse:
        principal, client = await self._caller(context, actions.READERS, "read reports")
        if not request.study_id:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "study_id is required")
        reports = await actions.study_reports(self.services, request.study_id, principal,
                                              client)
        if not reports:
            await _abort(context, grpc.StatusCode.NOT_FOUND, "no reports for this study")
        return service_pb.ListStudyReportsResponse(
            reports=[messages.summary(to_summary(r)) for r in reports])


def _event(report_id: str, item: ReportEvent) -> service_pb.GenerateEvent | None:
    """A pipeline event as a stream message; None for one clients need not see."""
    when = messages.timestamp(item.at)
    if item.kind == "sentence":
        return service_pb.GenerateEvent(report_id=report_id, time=when,
                                        sentence=messages.sentence(
                                            item.data["index"], item.data["sentence"],
                                            item.data.get("letterbox")))
    stage = messages.STAGES.get(item.data.get("stage", ""))
    if item.kind != "status" or stage is None or stage == messages.STAGES["queued"]:
        return None  # "queued" was the stream's first message
    return service_pb.GenerateEvent(report_id=report_id, time=when,
                                    status=service_pb.StatusUpdate(stage=stage))


def _time_left(context: Context, services: Services) -> float:
    remaining = context.time_remaining()
    limit = services.settings.stream_timeout_s
    return limit if remaining is None else max(0.0, min(limit, remaining - 0.5))


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with ``code``; ``message`` must carry no PHI."""
    await context.abort(code, message)
    raise AssertionError("abort returns only by raising")


async def _abort_ingest(context: Context, err: IngestError) -> NoReturn:
    await _abort(context, INGEST_CODES.get(err.status, grpc.StatusCode.INVALID_ARGUMENT),
                 str(err))


async def _abort_unfinished(context: Context, report: Report) -> NoReturn:
    await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                 f"report {report.id} is not finished yet; read it later with GetReport")


async def _abort_failed(context: Context, report: Report) -> NoReturn:
    """A failed report: the client's input (INVALID_ARGUMENT) or our pipeline (INTERNAL)."""
    gave_up = (report.result or {}).get("failure") == "error"
    await _abort(context, grpc.StatusCode.INTERNAL if gave_up
                 else grpc.StatusCode.INVALID_ARGUMENT,
                 f"report {report.id} failed: {report.status_reason or 'no reason given'}")


@asynccontextmanager
async def _answered_safely(context: Context) -> AsyncIterator[None]:
    """What a call raises becomes a status with words of ours: UNAVAILABLE while the store
    (PostgreSQL) is away, as REST's 503; INTERNAL for anything unexpected, never the
    exception's text. Aborts and cancellations pass as they are."""
    try:
        yield
    except (grpc.aio.AbortError, asyncio.CancelledError):
        raise
    except OperationalError:
        log.warning("the store is unavailable; answering UNAVAILABLE", exc_info=True)
        await _abort(context, grpc.StatusCode.UNAVAILABLE, "the report store is "
                     "unavailable; retry later")
    except Exception:
        log.exception("unhandled error in a gRPC call")
        await _abort(context, grpc.StatusCode.INTERNAL, "internal error")


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Calls and their duration per method and status code; no request data in labels."""

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method.rsplit("/", 1)[-1]
        if handler is None or not details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler

        def record(context: Context, start: float) -> None:
            code = context.code() or grpc.StatusCode.OK
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            GRPC_REQUESTS.labels(method, name).inc()
            GRPC_LATENCY.labels(method).observe(time.perf_counter() - start)

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Context) -> Any:
                start = time.perf_counter()
                try:
                    async with _answered_safely(context):
                        return await inner(request, context)
                finally:
                    record(context, start)
            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
                start = time.perf_counter()
                try:
                    async with _answered_safely(context):
                        async for message in stream(request, context):
                            yield message
                finally:
                    record(context, start)
            return grpc.unary_stream_rpc_method_handler(
                streaming, handler.request_deserializer, handler.response_serializer)
        return handler


async def watch_readiness(services: Services, servicer: Any, period_s: float = 5.0) -> None:
    """Keep the health service's answer in step with the gateway's readiness."""
    while True:
        checks = await readiness_checks(services)
        status = (health_pb2.HealthCheckResponse.SERVING
                  if all(v == "ok" for v in checks.values())
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            await servicer.set(name, status)
        await asyncio.sleep(period_s)


async def start_grpc(services: Services) -> tuple[grpc.aio.Server, asyncio.Task[None]]:
    """The gRPC server started on the configured port, and its readiness watcher."""
    settings = services.settings
    limit = settings.grpc_max_message_bytes
    server = grpc.aio.server(
        interceptors=[MetricsInterceptor()],
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", limit)])
    service_grpc.add_ReportServiceServicer_to_server(ReportService(services), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if settings.grpc_tls_cert and settings.grpc_tls_key:
        credentials = grpc.ssl_server_credentials(
            [(settings.grpc_tls_key.read_bytes(), settings.grpc_tls_cert.read_bytes())])
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise RuntimeError(f"the gRPC API could not listen on {address}")
    await server.start()
    log.info("gRPC API listening on %s", address)
    return server, asyncio.create_task(watch_readiness(services, health_servicer))
