"""The gateway: ``python -m services.gateway`` serves the REST API with uvicorn and, in the
same process and event loop, the gRPC API on its own port (``services.gateway.grpc_api``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles
from prometheus_client import REGISTRY
from sqlalchemy.exc import OperationalError
from starlette.routing import compile_path
from starlette.types import Scope

from radreport.model.report import DEFAULT_MODEL_DIR, MODEL_INFO_FILE, ModelInfo
from radreport.serving.client import ReportClient
from services.common.auth import Authenticator, get_auth_settings
from services.common.blobs import BlobStore
from services.common.logs import configure_logging, forward_audit_to_syslog
from services.common.metrics import HTTP_LATENCY, HTTP_REQUESTS, QueueDepthCollector
from services.common.queue import DEAD_LETTER_KEY, STAGE_QUEUES, redis_client
from services.common.redrive import redrive_lost
from services.common.settings import get_common_settings
from services.common.store import Store
from services.gateway.body_limits import BodyLimits
from services.gateway.deps import Services
from services.gateway.grpc_api import start_grpc
from services.gateway.openapi import error_answer
from services.gateway.routes import health, reports, review
from services.gateway.settings import get_gateway_settings

STATIC = Path(__file__).parent / "static"
# The review page loads nothing from elsewhere and runs no inline script.
REVIEW_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
              "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
              "frame-ancestors 'none'")
log = logging.getLogger(__name__)


def open_services() -> Services:
    common, settings = get_common_settings(), get_gateway_settings()
    store = Store(common.sqlalchemy_url)
    store.migrate()
    info = ModelInfo.load((settings.model_dir or DEFAULT_MODEL_DIR) / MODEL_INFO_FILE)
    settings.image_root.mkdir(parents=True, exist_ok=True)
    if settings.audit_syslog:
        forward_audit_to_syslog(settings.audit_syslog)
    return Services(common=common, settings=settings, store=store,
                    blobs=BlobStore(common.blobs), redis=aioredis.from_url(common.redis_url),
                    triton=ReportClient(common.triton_url, common.triton_model, timeout_s=2.0,
                                        retries=0),
                    model_version=info.model_version,
                    auth=Authenticator(get_auth_settings()))


async def redrive(services: Services) -> None:
    """Queue again, once, every report whose broker message was lost (``redrive``): after
    a Redis restart, a failed publish, or a gateway that died between storing and queueing.
    The generation claim makes concurrent gateways safe."""
    settings = services.settings
    client = redis_client()
    while settings.redrive_period_s > 0:
        await asyncio.sleep(settings.redrive_period_s)
        try:
            await run_in_threadpool(redrive_lost, services.store, client,
                                    settings.redrive_idle_s, settings.redrive_in_flight_s)
        except Exception:  # Redis still away, say: try again next period, never crash
            log.warning("re-drive sweep failed; retrying next period", exc_info=True)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    services = app.state.services = open_services()
    queues = QueueDepthCollector(services.common.redis_url, list(STAGE_QUEUES.values()),
                                 DEAD_LETTER_KEY)
    REGISTRY.register(queues)
    sweeper = asyncio.create_task(redrive(services))
    grpc_server = None
    if services.settings.grpc_port:
        grpc_server, readiness = await start_grpc(services)
    yield
    if grpc_server is not None:
        readiness.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await readiness  # before the Triton client below is closed under it
        await grpc_server.stop(grace=5)
    sweeper.cancel()
    REGISTRY.unregister(queues)
    await services.redis.aclose()
    services.triton.close()


def create_app() -> FastAPI:
    app = FastAPI(title="radreport gateway", version="1.0.0", lifespan=lifespan,
                  description="Grounded chest X-ray report drafts. Not for clinical use: "
                              "the shipped model is trained on synthetic phantoms.")
    app.include_router(reports.router)
    app.include_router(review.router)
    app.include_router(health.router)
    app.mount("/review", StaticFiles(directory=STATIC, html=True), name="review")
    settings = get_gateway_settings()
    app.add_middleware(BodyLimits, multipart_max_bytes=settings.max_upload_bytes,
                       deadline_s=settings.body_timeout_s)

    @app.middleware("http")
    async def record_metrics(request: Request,
                             call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except OperationalError:  # the store (PostgreSQL) is away: retry, nothing was done
            log.warning("the store is unavailable; answering 503", exc_info=True)
            response = error_answer(503, "the report store is unavailable; retry after the "
                                         "Retry-After delay", "store_unavailable")
        except Exception:  # counted like any answer; the body names nothing internal
            log.exception("unhandled error answering %s", request.method)
            response = error_answer(500, "internal server error", "internal")
        template = route_template(app, request.scope)  # templates only: no ids in labels
        HTTP_LATENCY.labels(request.method, template).observe(time.perf_counter() - start)
        HTTP_REQUESTS.labels(request.method, template, str(response.status_code)).inc()
        if request.url.path.startswith("/review"):
            response.headers["Content-Security-Policy"] = REVIEW_CSP
        return response

    return app


def route_template(app: FastAPI, scope: Scope) -> str:
    """The matched route's path template; for an answer given before routing (a body that
    BodyLimits refused), the documented path whose pattern the request's path matches."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    if not hasattr(app.state, "path_patterns"):
        app.state.path_patterns = [(compile_path(path)[0], path) for path in app.openapi()["paths"]]
    return next((path for pattern, path in app.state.path_patterns
                 if pattern.match(scope["path"])), "unmatched")


def main(argv: list[str] | None = None) -> None:
    settings = get_gateway_settings()
    parser = argparse.ArgumentParser(description="Run the radreport API gateway.")
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--loglevel", default="info")
    args = parser.parse_args(argv)
    configure_logging(args.loglevel)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_config=None,
                access_log=False)
