"""Liveness, readiness (Redis, Triton, store) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.deps import Services, ServicesDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers; says nothing of its dependencies."""
    return {"status": "ok"}


async def readiness_checks(services: Services) -> dict[str, str]:
    """"ok" or what is wrong, for Redis, Triton (model loaded) and the store."""
    checks: dict[str, str] = {}
    try:
        await services.redis.ping()
        checks["redis"] = "ok"
    except Exception as err:  # any failure means not ready; say which kind
        checks["redis"] = type(err).__name__
    checks["triton"] = "ok" if await run_in_threadpool(services.triton.ready) else "not ready"
    try:
        await run_in_threadpool(services.store.ping)
        checks["store"] = "ok"
    except Exception as err:
        checks["store"] = type(err).__name__
    return checks


@router.get("/readyz", responses={503: {"description": "Redis, Triton or the store is not "
                                                                 "ready; checks say which"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when Redis, Triton (model loaded) and the store all answer; 503 otherwise."""
    checks = await readiness_checks(services)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text exposition format",
    "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
async def metrics() -> Response:
    """Every metric of this process; labels hold no ids and no PHI."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
