"""Health check of the runtime image (Docker HEALTHCHECK, Compose healthcheck).

``python /opt/radreport/healthcheck.py [SERVICE]``: exit 0 when the service in this container
answers. SERVICE is the argument, else RADREPORT_SERVICE, else read from PID 1's command line
(``python -m services.NAME``).
- gateway: ``GET /healthz`` on RADREPORT_GATEWAY_PORT (liveness; readiness is ``/readyz``);
- dicom: a TCP connection to RADREPORT_DICOM_PORT (what the Kubernetes probe does too);
- workers: ``GET /metrics`` on RADREPORT_WORKER_METRICS_PORT, served by the worker's main
  process.
Standard library only.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from pathlib import Path

WORKERS = ("preprocess", "inference", "grounding", "fhir")
TIMEOUT_S = 4.0


def service_name(argv: list[str]) -> str:
    if len(argv) > 1:
        return argv[1]
    if os.environ.get("RADREPORT_SERVICE"):
        return os.environ["RADREPORT_SERVICE"]
    try:
        words = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        words = []
    for word in words:
        if word.startswith("services."):
            return word.removeprefix("services.")
    return "gateway"  # the image's default command


def http_ok(port: int, path: str) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT_S) as reply:
        return bool(reply.status == 200)


def tcp_ok(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S):
        return True


def check(service: str) -> bool:
    if service == "gateway":
        return http_ok(int(os.environ.get("RADREPORT_GATEWAY_PORT", "8080")), "/healthz")
    if service == "dicom":
        return tcp_ok(int(os.environ.get("RADREPORT_DICOM_PORT", "11112")))
    if service in WORKERS:
        port = int(os.environ.get("RADREPORT_WORKER_METRICS_PORT", "9100"))
        if port == 0:
            raise RuntimeError("RADREPORT_WORKER_METRICS_PORT=0: no endpoint to check")
        return http_ok(port, "/metrics")
    raise RuntimeError(f"unknown service {service!r}")


def main(argv: list[str]) -> int:
    service = service_name(argv)
    try:
        healthy = check(service)
    except (OSError, RuntimeError, ValueError) as err:
        print(f"{service}: unhealthy: {err}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
