"""Request dependencies: the clients opened once in the lifespan, and who is calling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool

from radreport.serving.client import ReportClient
from services.common.auth import Authenticator, AuthError, Principal, Role
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
    api_key = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization", "")
    try:
        if api_key:
            return services.auth.verify_api_key(api_key)
        if authorization.lower().startswith("bearer "):
            return services.auth.verify_token(authorization[7:].strip())
        message = "authentication required: send a bearer token or an X-API-Key"
    except AuthError as err:
        message = str(err)
    await run_in_threadpool(services.store.audit, "anonymous", "authenticate", "gateway",
                            None, "denied", client, message)
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, message,
                        headers={"WWW-Authenticate": "Bearer"})


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def allow(*roles: Role) -> Callable[..., object]:
    """A dependency admitting only ``roles``; others get 403 and an audit record."""
    async def check(request: Request, principal: PrincipalDep, services: ServicesDep,
                    client: ClientDep) -> Principal:
        if principal.role not in roles:
            await run_in_threadpool(services.store.audit, principal.subject, "access",
                                    "gateway", None, "denied", client,
                                    f"{principal.role} may not {request.method} this resource")
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"the {principal.role} role may not do this")
        return principal
    return check


Readers = Annotated[Principal, Depends(allow(Role.radiologist, Role.admin, Role.service))]
Requesters = Annotated[Principal, Depends(allow(Role.radiologist, Role.service))]
Radiologists = Annotated[Principal, Depends(allow(Role.radiologist))]
Reviewers = Annotated[Principal, Depends(allow(Role.radiologist, Role.admin))]
Admins = Annotated[Principal, Depends(allow(Role.admin))]
