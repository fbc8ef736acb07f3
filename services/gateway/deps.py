"""Request dependencies: the clients opened once in the lifespan, as typed aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from radreport.serving.client import ReportClient
from services.common.blobs import BlobStore
from services.common.settings import CommonSettings
from services.common.store import Store
from services.gateway.settings import GatewaySettings


@dataclass
class Services:
    common: CommonSettings
    settings: GatewaySettings
    store: Store
    blobs: BlobStore
    redis: aioredis.Redis
    triton: ReportClient
    model_version: str


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def actor_of(request: Request) -> str:
    """Who is calling; authentication replaces this (issue 8). Never a patient identifier."""
    return "anonymous"


def client_of(request: Request) -> str | None:
    return request.client.host if request.client else None


ServicesDep = Annotated[Services, Depends(get_services)]
ActorDep = Annotated[str, Depends(actor_of)]
ClientDep = Annotated[str | None, Depends(client_of)]
