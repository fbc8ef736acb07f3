"""image_url without SSRF, against a real HTTP server on loopback (the only network tests
can reach, so loopback is allowed through a test allow-list where a fetch must succeed)."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import ClassVar

import pytest

from radreport.serving.tritonserver import free_port
from services.gateway.fetch import REFUSAL, FetchPolicy, Resolver, fetch_image
from services.gateway.ingest import IngestError

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class Handler(http.server.BaseHTTPRequestHandler):
    hosts_seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Handler.hosts_seen.append(self.headers.get("Host", ""))
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):  # one byte every 0.3 s: 30 s in all
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.3)
            return
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(IMAGE)))
        self.end_headers()
        self.wfile.write(IMAGE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _policy(**changes: object) -> FetchPolicy:
    allowed = FetchPolicy.of(["localhost", "images.test"], ["http"], ["127.0.0.0/8"],
                             max_bytes=1 << 20, deadline_s=2.0)
    return replace(allowed, **changes)  # type: ignore[arg-type]


def _fetch(url: str, policy: FetchPolicy) -> bytes:
    return asyncio.run(fetch_image(url, policy))


def _refusal(url: str, policy: FetchPolicy) -> IngestError:
    with pytest.raises(IngestError) as refused:
        _fetch(url, policy)
    return refused.value


def test_an_allowed_host_is_fetched(port: int) -> None:
    assert _fetch(f"http://localhost:{port}/study.png", _policy()) == IMAGE


def test_every_refusal_gives_the_same_answer(port: int) -> None:
    """Off by default, a scheme or host off the list, a loopback address without the test
    allow-list, a closed port, a redirect to the metadata service: one status, one text."""
    cases = {
        "off by default": (f"http://localhost:{port}/a", FetchPolicy()),
        "scheme": (f"ftp://localhost:{port}/a", _policy()),
        "host": (f"http://127.0.0.1:{port}/a", _policy()),
        "loopback": (f"http://localhost:{port}/a", _policy(allowed_networks=())),
        "closed port": (f"http://localhost:{free_port()}/a", _policy()),
        "redirect": (f"http://localhost:{port}/redirect", _policy()),
        "private address": ("http://images.test/a", _policy(
            allowed_networks=(), resolver=_resolving_to("10.1.2.3")))}
    for name, (url, policy) in cases.items():
        refused = _refusal(url, policy)
        assert (refused.status, str(refused), refused.reason) == (
            422, REFUSAL, "image_url_refused"), name


def _resolving_to(*addresses: str) -> Resolver:
    async def resolver(host: str, port: int) -> list[str]:
        return list(addresses)
    return resolver


def test_a_host_with_any_non_public_address_is_refused() -> None:
    for addresses in (("93.184.215.14", "127.0.0.1"), ("::ffff:10.0.0.1",), ("169.254.169.254",),
                      ("fe80::1",), ("100.64.0.1",), ("0.0.0.0",)):
        policy = _policy(allowed_networks=(), resolver=_resolving_to(*addresses))
        assert _refusal("http://images.test/a", policy).reason == "image_url_refused"


def test_the_connection_is_pinned_to_the_checked_address(port: int) -> None:
    """The name is resolved once; the request goes to that address, the name in Host.
    A rebinding resolver (public first, loopback after) never gets a second question."""
    calls: list[str] = []

    async def rebinding(host: str, port_: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["10.9.9.9"]

    Handler.hosts_seen.clear()
    assert _fetch(f"http://images.test:{port}/study.png", _policy(resolver=rebinding)) == IMAGE
    assert calls == ["images.test"]
    assert Handler.hosts_seen == [f"images.test:{port}"]


def test_proxy_variables_are_ignored(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    assert _fetch(f"http://localhost:{port}/study.png", _policy()) == IMAGE


def test_a_slow_download_meets_the_total_deadline(port: int) -> None:
    start = time.monotonic()
    assert _refusal(f"http://localhost:{port}/slow", _policy()).reason == "image_url_refused"
    assert time.monotonic() - start < 4.0  # the 2 s deadline, not 30 s of trickle


def test_the_size_cap_holds_while_streaming(port: int) -> None:
    refused = _refusal(f"http://localhost:{port}/study.png", _policy(max_bytes=100))
    assert (refused.status, refused.reason) == (413, "too_large")
