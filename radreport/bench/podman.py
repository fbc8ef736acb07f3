"""podman as the container runtime of ``radreport bench compose`` and ``bench kube``.

Podman 4.3 (Debian bookworm) runs health checks from systemd timers; where there is no systemd
(our build and CI machines) nothing runs them, and every container stays "starting". A
``HealthTicker`` plays systemd's part: it runs each container's check at its own interval with
``podman healthcheck run``, which applies the start period and retries as podman defines them.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "deploy" / "containers" / "containers.conf"


def podman_env() -> dict[str, str]:
    """The environment for podman: our containers.conf unless the caller has one."""
    return {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF",
                                                            str(CONTAINERS_CONF))}


def podman(*args: str, check: bool = True, timeout: float = 600) -> str:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                            env=podman_env())
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}: exit {result.returncode}: "
                           f"{result.stderr.strip()[-2000:]}")
    return result.stdout


@dataclass(frozen=True)
class Container:
    name: str
    service: str
    state: str  # running, exited, ...
    health: str  # healthy, unhealthy, starting, or "" without a health check
    user: str
    read_only: bool


def exists(kind: str, name: str) -> bool:
    """Whether podman has the ``kind`` (image, network, volume, ...) called ``name``."""
    return subprocess.run(["podman", kind, "exists", name], env=podman_env()).returncode == 0


def containers(label: str) -> list[Container]:
    """The containers that carry ``label`` (key=value), as podman sees them now."""
    return described(podman("ps", "-a", "--filter", f"label={label}", "--format",
                            "{{.Names}}").split())


def described(names: list[str]) -> list[Container]:
    """The named containers that exist, as podman sees them now."""
    found = []
    for item in _inspect_existing(names):
        labels = item["Config"].get("Labels") or {}
        service = (labels.get("com.docker.compose.service")
                   or labels.get("io.kubernetes.container.name") or item["Name"])
        health = (item["State"].get("Health") or item["State"].get("Healthcheck") or {})
        found.append(Container(item["Name"], service, item["State"]["Status"],
                               health.get("Status", "") if item["Config"].get("Healthcheck")
                               else "", item["Config"].get("User") or "root",
                               bool(item["HostConfig"].get("ReadonlyRootfs"))))
    return found


def _inspect_existing(names: list[str]) -> list[dict[str, Any]]:
    """``podman inspect`` of the named containers that still exist (one may go at any time)."""
    if not names:
        return []
    result = subprocess.run(["podman", "inspect", *names], capture_output=True, text=True,
                            timeout=120, env=podman_env())
    if result.returncode == 0:
        return list(json.loads(result.stdout))
    if len(names) == 1:
        return []  # it is gone
    return [item for name in names for item in _inspect_existing([name])]


class HealthTicker:
    """Runs the health checks of the labelled containers every ``period_s``, in a thread."""

    def __init__(self, label: str, period_s: float = 5.0) -> None:
        self.label, self.period_s = label, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-ticker", daemon=True)

    def __enter__(self) -> HealthTicker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            for container in containers(self.label):
                if container.state == "running" and container.health:
                    podman("healthcheck", "run", container.name, check=False, timeout=60)
            self._stop.wait(self.period_s)


def wait_healthy(label: str, expected: set[str], timeout_s: float) -> float:
    """Seconds until every expected service runs and passes its health check (if it has one).

    Raises with each service's state when ``timeout_s`` passes first."""
    start = time.monotonic()
    while True:
        found = {c.service: c for c in containers(label)}
        ready = {s for s, c in found.items()
                 if c.state == "running" and c.health in {"", "healthy"}}
        if expected <= ready:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            states = {s: f"{c.state}/{c.health or '-'}" for s, c in found.items()}
            missing = sorted(expected - found.keys())
            raise RuntimeError(f"not healthy after {timeout_s:.0f} s: {states}; "
                               f"no container for {missing}")
        time.sleep(2)


def logs_tail(name: str, lines: int = 30) -> str:
    result = subprocess.run(["podman", "logs", "--tail", str(lines), name], capture_output=True,
                            text=True, timeout=60, env=podman_env())
    return (result.stdout + result.stderr).strip()
