"""Request dependencies: the clients opened once in the lifespan, and who is calling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request, status

from radreport.serving.client import ReportClient
from services.common.auth import Authenticator, AuthError, Principal, Role
from services.common.blobs import BlobStore
from services.common.settings import CommonSettings
from services.common.store import Store
from services.gateway.actions import (
    ADMINS,
    RADIOLOGISTS,
    READERS,
    REQUESTERS,
    REVIEWERS,
    Forbidden,
    authenticate,
    authorize,
)
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
    auth: Authenticator


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def client_of(request: Request) -> str | None:
    return request.client.host if request.client else None


ServicesDep = Annotated[Services, Depends(get_services)]
ClientDep = Annotated[str | None, Depends(client_of)]


async def get_principal(request: Request, services: ServicesDep, client: ClientDep,
                        ) -> Principal:
    """A bearer token (people) or an ``X-API-Key`` (machines); 401 otherwise."""
    try:
        return await authenticate(services, request.headers.get("x-api-key"),
                                  request.headers.get("authorization"), client)
    except AuthError as err:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(err),
                            headers={"WWW-Authenticate": "Bearer"}) from err


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def allow(*roles: Role) -> Callable[..., object]:
    """A dependency admitting only ``roles``; others get 403 and an audit record."""
    async def check(request: Request, principal: PrincipalDep, services: ServicesDep,
                    client: ClientDep) -> Principal:
        try:
            await authorize(services, principal, roles, client,
                            f"{request.method} this resource")
        except Forbidden as err:
            raise HTTPException(status.HTTP_403_FORBIDDEN, str(err)) from err
        return principal
    return check


Readers = Annotated[Principal, Depends(allow(*READERS))]
Requesters = Annotated[Principal, Depends(allow(*REQUESTERS))]
Radiologists = Annotated[Principal, Depends(allow(*RADIOLOGISTS))]
Reviewers = Annotated[Principal, Depends(allow(*REVIEWERS))]
Admins = Annotated[Principal, Depends(allow(*ADMINS))]
