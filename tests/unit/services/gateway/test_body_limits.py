"""Bodies capped while they stream and given a deadline, on a real uvicorn server spoken to
through raw sockets (a client library would not send a lying or trickling body)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from radreport.serving.tritonserver import free_port
from services.gateway.body_limits import BodyLimits

JSON_CAP = 10_000
UPLOAD_CAP = 50_000


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/json")
    async def read_json(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.post("/upload")
    async def read_form(request: Request) -> dict[str, int]:
        form = await request.form()
        upload = form["file"]
        assert not isinstance(upload, str)
        return {"bytes": len(await upload.read())}

    app.add_middleware(BodyLimits, multipart_max_bytes=UPLOAD_CAP, deadline_s=1.0,
                       json_max_bytes=JSON_CAP)
    return app


@pytest.fixture(scope="module")
def base() -> Iterator[tuple[str, int]]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_app(), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(10)


def _raw(base: tuple[str, int], head: str, chunks: list[bytes], pause_s: float = 0.0) -> str:
    """Send a request by hand; the status line of what comes back (or '' if none)."""
    with socket.create_connection(base, timeout=10) as conn:
        conn.sendall(head.encode())
        try:
            for chunk in chunks:
                conn.sendall(chunk)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        return conn.recv(65536).decode(errors="replace").split("\r\n", 1)[0]


def test_bodies_within_the_caps_pass(base: tuple[str, int]) -> None:
    url = f"http://{base[0]}:{base[1]}"
    assert httpx.post(f"{url}/json", content=b"x" * JSON_CAP).json() == {"bytes": JSON_CAP}
    upload = httpx.post(f"{url}/upload", files={"file": ("a.png", b"y" * UPLOAD_CAP)})
    assert upload.json() == {"bytes": UPLOAD_CAP}


def test_a_declared_length_over_the_cap_is_refused_before_reading(base: tuple[str, int]
                                                                   ) -> None:
    head = ("POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 200000000\r\n\r\n")
    assert _raw(base, head, []) == "HTTP/1.1 413 Request Entity Too Large"


def test_an_undeclared_body_is_cut_off_at_the_cap(base: tuple[str, int]) -> None:
    head = ("POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (4096, b"z" * 4096)
    assert _raw(base, head, [chunk] * 100) == "HTTP/1.1 413 Request Entity Too Large"
    url = f"http://{base[0]}:{base[1]}/upload"
    big = httpx.post(url, files={"file": ("a.png", b"y" * (UPLOAD_CAP + 100_000))})
    assert (big.status_code, big.json()["reason"]) == (413, "body_too_large")


def test_a_trickling_body_gets_408_at_the_deadline(base: tuple[str, int]) -> None:
    head = ("POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n")
    start = time.monotonic()
    status = _raw(base, head, [b"{"] * 10, pause_s=0.3)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert time.monotonic() - start < 5.0  # the 1 s deadline, not 30 s of trickle
