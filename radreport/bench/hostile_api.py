"""The gateway as a hostile or careless client meets it, for ``radreport bench chaos``:
R12 bodies (a lying Content-Length, a trickled body), SSRF (``image_url`` off by default, and
the same refusal for every internal address), and the review transactions (a sign-off that
fails leaves the report exactly as it was). Raw sockets where a client library would not send
what is tested."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass(frozen=True)
class Check:
    figure: str
    measured: str
    goal: str
    met: bool


def _raw_status(host: str, port: int, head: str, body: bytes, wait_s: float) -> tuple[int, float]:
    """Send ``head`` and ``body`` as they are; the status line's code, and seconds to it."""
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=wait_s) as connection:
        connection.sendall(head.encode() + body)
        answer = connection.recv(4096).decode(errors="replace")
    seconds = time.monotonic() - start
    parts = answer.split(" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), seconds


def body_checks(host: str, port: int, token: str, deadline_s: float = 30.0) -> list[Check]:
    """R12: a declared 200 MB body refused unread; a body trickling in cut at the deadline."""
    head = ("POST /api/v1/reports/generate HTTP/1.1\r\nHost: chaos\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n")
    declared, declared_s = _raw_status(
        host, port, head + "Content-Length: 200000000\r\n\r\n", b"{", 30)
    slow, slow_s = _raw_status(host, port, head + "Content-Length: 1000\r\n\r\n", b"{",
                               deadline_s + 30)
    return [Check("R12 200 MB declared body", f"{declared} in {declared_s:.2f} s, unread",
                  "413", declared == 413),
            Check("R12 body trickling in", f"{slow} after {slow_s:.0f} s",
                  f"408 within {deadline_s:.0f} s", slow == 408 and slow_s <= deadline_s + 2)]


def ssrf_checks(api: httpx.Client) -> list[Check]:
    """SSRF: with no hosts configured, every image_url is refused the same way."""
    targets = ["http://127.0.0.1:6379/", "http://169.254.169.254/latest/meta-data/",
               "http://10.0.0.1/x.dcm", "https://example.org/x.dcm"]
    answers = [api.post("/api/v1/reports/generate", json={"study_id": "CHAOS-SSRF",
                                                          "image_url": url}) for url in targets]
    statuses = {a.status_code for a in answers}
    bodies = {a.text for a in answers}
    return [Check("SSRF image_url, off by default (loopback, metadata, private, public)",
                  f"{sorted(statuses)}, {len(bodies)} distinct answer(s)", "422, 1",
                  statuses == {422} and len(bodies) == 1)]


def transaction_checks(api: httpx.Client, reviewer: httpx.Client, study: Path) -> list[Check]:
    """A sign-off that fails validation changes nothing: report, FHIR bundle, audit aside."""
    made = api.post("/api/v1/reports/generate", data={"study_id": "CHAOS-TRANSACTION"},
                    files={"file": ("s.dcm", study.read_bytes())}).json()
    report_id = made["report_id"]
    before = (reviewer.get(f"/api/v1/reports/{report_id}").json(),
              reviewer.get(f"/api/v1/reports/{report_id}/fhir").content)
    refused = reviewer.post(f"/api/v1/reports/{report_id}/sign",
                            json={"findings": "Edited.", "impression": ""})
    after = (reviewer.get(f"/api/v1/reports/{report_id}").json(),
             reviewer.get(f"/api/v1/reports/{report_id}/fhir").content)
    unchanged = before == after and after[0]["review_status"] == "draft"
    state = "unchanged" if unchanged else "CHANGED"
    return [Check("transactions: sign with an empty impression",
                  f"{refused.status_code}; report and FHIR {state}", "4xx; unchanged",
                  400 <= refused.status_code < 500 and unchanged)]
