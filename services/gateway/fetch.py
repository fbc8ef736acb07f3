"""``image_url`` downloads that cannot be turned against our own network (SSRF).

Off unless hosts are configured. A URL must name an allowed scheme and host; the host is
resolved once, every address it resolves to must be public (loopback, private, link-local,
shared and reserved ranges are refused unless a configured network allows them), and the
connection goes to that very address with the host name kept for the Host header and TLS
(SNI and certificate check), so a second DNS answer cannot move it (DNS rebinding). Proxy
variables are ignored, redirects are not followed, and the whole download has one deadline
and the image size cap. Every refusal and every failed fetch gives the same answer, so
answers cannot map which addresses and ports exist; the log keeps the kind of failure.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

from services.gateway.ingest import IngestError, check_size

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
REFUSAL = "image_url is not allowed, or the image could not be fetched from it"


class FetchRefused(Exception):
    """Why a fetch was refused, for the log only (the client sees REFUSAL)."""


async def resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class FetchPolicy:
    hosts: frozenset[str] = frozenset()  # empty: image_url is off
    schemes: frozenset[str] = frozenset({"https"})
    allowed_networks: tuple[IPNetwork, ...] = ()  # non-public ranges allowed nonetheless
    max_bytes: int = 64 * 1024 * 1024
    deadline_s: float = 10.0
    resolver: Resolver = field(default=resolve, compare=False)

    @classmethod
    def of(cls, hosts: Sequence[str], schemes: Sequence[str], networks: Sequence[str],
           max_bytes: int, deadline_s: float) -> FetchPolicy:
        return cls(frozenset(h.lower() for h in hosts), frozenset(s.lower() for s in schemes),
                   tuple(ipaddress.ip_network(n) for n in networks), max_bytes, deadline_s)

    def allows_address(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed_networks):
            return True
        return address.is_global and not address.is_multicast


async def fetch_image(url: str, policy: FetchPolicy) -> bytes:
    """The image at ``url`` under ``policy``; IngestError 422 (one message) if refused."""
    try:
        async with asyncio.timeout(policy.deadline_s):
            return await _fetch(httpx.URL(url), policy)
    except IngestError:
        raise
    except (FetchRefused, TimeoutError, httpx.HTTPError, OSError, ValueError) as err:
        log.warning("image_url refused: %s", _kind(err))
        raise IngestError(422, REFUSAL, "image_url_refused") from None


def _kind(err: Exception) -> str:
    return str(err) if isinstance(err, FetchRefused) else type(err).__name__


async def _fetch(url: httpx.URL, policy: FetchPolicy) -> bytes:
    host = url.host.lower()
    if url.scheme not in policy.schemes:
        raise FetchRefused("scheme not allowed")
    if host not in policy.hosts:
        raise FetchRefused("host not on the allow-list")
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = [ipaddress.ip_address(a.split("%")[0]) for a in await policy.resolver(host, port)]
    if not addresses or not all(policy.allows_address(a) for a in addresses):
        raise FetchRefused("host resolves to a non-public address")
    pinned = url.copy_with(host=str(addresses[0]))
    headers = {"Host": f"{url.host}:{url.port}" if url.port else url.host}
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                 timeout=policy.deadline_s) as client:
        request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
        response = await client.send(request, stream=True)
        try:
            if response.status_code != 200:
                raise FetchRefused(f"answered HTTP {response.status_code}")
            check_size(int(response.headers.get("content-length", 0) or 0), policy.max_bytes)
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                check_size(size, policy.max_bytes)
                chunks.append(chunk)
        finally:
            await response.aclose()
    return b"".join(chunks)
