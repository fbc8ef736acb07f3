"""``radreport bench compose``: docker-compose.yml run for real, under podman-compose.

Starts the `cpu` profile from the images deploy/containers/build.sh made (with
deploy/containers/compose.podman.yml's local stand-ins for Redis, PostgreSQL and Prometheus) on
free loopback ports, waits until every container is healthy, runs the smoke test through the
published ports (radreport.bench.smoke), checks the containers run as non-root users on
read-only root file systems, then stops the stack, starts it again and finds the signed report
still there. Prints time to healthy (cold and after the restart) and the smoke test's latencies.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from radreport import __version__
from radreport.bench.podman import (
    ROOT,
    HealthTicker,
    containers,
    exists,
    logs_tail,
    podman,
    podman_env,
    wait_healthy,
)
from radreport.bench.smoke import REST_REPEATS, Endpoints, SmokeResult, run_smoke, signed_report
from radreport.serving.tritonserver import free_port

PROJECT = "radreport-bench"
LABEL = f"io.podman.compose.project={PROJECT}"
FILES = [ROOT / "docker-compose.yml", ROOT / "deploy" / "containers" / "compose.podman.yml"]
RUNTIME_SERVICES = {"gateway", "dicom", "worker-preprocess", "worker-inference",
                    "worker-grounding", "worker-fhir"}
EXPECTED = RUNTIME_SERVICES | {"redis", "postgres", "triton-cpu", "prometheus"}
IMAGES = {"RADREPORT_IMAGE": f"localhost/radreport:{__version__}",
          "RADREPORT_TRITON_CPU_IMAGE": f"localhost/radreport-triton-cpu:{__version__}"}


class ComposeStack:
    """The compose project on free loopback ports, with its secrets under ``state``."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.ports = {name: free_port() for name in ("gateway", "grpc", "dicom", "prometheus")}
        self.endpoints = Endpoints(f"http://127.0.0.1:{self.ports['gateway']}", "127.0.0.1",
                                   self.ports["dicom"],
                                   f"http://127.0.0.1:{self.ports['prometheus']}")

    def environment(self) -> dict[str, str]:
        return {**podman_env(), **IMAGES,
                "RADREPORT_SECRETS_DIR": str(self.state / "secrets"),
                "RADREPORT_GATEWAY_PUBLISH": f"127.0.0.1:{self.ports['gateway']}",
                "RADREPORT_GATEWAY_GRPC_PUBLISH": f"127.0.0.1:{self.ports['grpc']}",
                "RADREPORT_DICOM_PUBLISH": f"127.0.0.1:{self.ports['dicom']}",
                "RADREPORT_PROMETHEUS_PUBLISH": f"127.0.0.1:{self.ports['prometheus']}",
                "RADREPORT_PUBLIC_BASE_URL": self.endpoints.gateway_url}

    def compose(self, *args: str, timeout: float = 900) -> None:
        files = [arg for path in FILES for arg in ("-f", str(path))]
        command = [str(Path(sys.executable).parent / "podman-compose"), "--profile", "cpu",
                   "-p", PROJECT, *files, *args]
        result = subprocess.run(command, cwd=ROOT, env=self.environment(), capture_output=True,
                                text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"podman-compose {' '.join(args)}: exit {result.returncode}: "
                               f"{(result.stdout + result.stderr)[-3000:]}")

    def make_secrets(self) -> None:
        subprocess.run(["bash", str(ROOT / "deploy" / "compose" / "make-secrets.sh")],
                       env=self.environment(), check=True, capture_output=True, timeout=60)

    def token(self, role: str) -> str:
        gateway = next(c.name for c in containers(LABEL) if c.service == "gateway")
        return podman("exec", gateway, "radreport", "token", "--role", role, "--ttl",
                      "3600").strip()

    def start(self, timeout_s: float) -> float:
        """Seconds from `up` until every service is healthy."""
        start = time.monotonic()
        self.compose("up", "-d", "--no-build")
        try:
            wait_healthy(LABEL, EXPECTED, timeout_s - (time.monotonic() - start))
        except RuntimeError as error:
            unhealthy = [c for c in containers(LABEL) if c.health not in {"", "healthy"}]
            tails = "\n".join(f"--- {c.name}\n{logs_tail(c.name)}" for c in unhealthy[:3])
            raise RuntimeError(f"{error}\n{tails}") from None
        return time.monotonic() - start


def check_containers() -> list[str]:
    """Every radreport container runs as uid 10001 on a read-only root file system."""
    ours = [c for c in containers(LABEL) if c.service in RUNTIME_SERVICES | {"triton-cpu"}]
    return [f"{c.service}: user {c.user}, read-only {c.read_only}" for c in ours
            if c.user.split(":")[0] != "10001" or not c.read_only]


def check_runtime_image() -> str:
    """The runtime image holds no PyTorch, no compiler and no package installer."""
    image = IMAGES["RADREPORT_IMAGE"]
    found = podman("run", "--rm", "--entrypoint", "sh", image, "-c",
                   "for tool in gcc cc c++ clang make pip pip3; do command -v $tool; done; "
                   "python -c 'import importlib.util as u; print(u.find_spec(\"torch\") or \"\")'"
                   ).split()
    if found:
        raise AssertionError(f"{image} carries {found}")
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image))
    return f"{image}: {size / 1e6:.0f} MB, no PyTorch, no compiler, no pip"


def run(state: Path, timeout_s: float = 900, keep: bool = False) -> Iterator[str]:
    missing = [image for image in IMAGES.values() if not exists("image", image)]
    if missing:
        raise RuntimeError(f"no image {', '.join(missing)}: run deploy/containers/build.sh")
    yield f"image: {check_runtime_image()}"
    stack = ComposeStack(state)
    stack.make_secrets()
    stack.compose("down", "-v", timeout=300)
    try:
        with HealthTicker(LABEL):
            healthy_s = stack.start(timeout_s)
            yield f"compose: {len(EXPECTED)} services healthy {healthy_s:.0f} s after `up`"
            problems = check_containers()
            if problems:
                raise AssertionError("containers not as promised: " + "; ".join(problems))
            yield "compose: radreport containers run as uid 10001 on read-only root file systems"
            smoke = run_smoke(stack.endpoints, stack.token)
            yield from describe(smoke)
            stack.compose("down", timeout=300)
            restart_s = stack.start(timeout_s)
            signed_by = signed_report(stack.endpoints, stack.token, smoke.signed_report_id)
            yield (f"compose: stopped and started again, healthy in {restart_s:.0f} s; the "
                   f"signed report is still signed (by {signed_by})")
    finally:  # once the ticker has stopped: it must not inspect containers being removed
        if not keep:
            stack.compose("down", "-v", timeout=300)


def describe(smoke: SmokeResult) -> Iterator[str]:
    yield (f"smoke: REST study reported in {smoke.rest_seconds:.1f} s (the next "
           f"{REST_REPEATS}: p50 {smoke.rest_p50_seconds:.2f} s), DICOM study (storescu) in "
           f"{smoke.dicom_seconds:.1f} s (with the study-idle window); grounded sentences "
           f"{smoke.grounded_sentences}; one report signed")
    yield (f"smoke: Prometheus targets up: {len(smoke.targets_up)} "
           f"({', '.join(sorted(smoke.targets_up))})")
    yield (f"smoke: dashboards' queries answered by Prometheus: {smoke.dashboard_queries} "
           f"({smoke.dashboard_queries_with_data} with data); Grafana itself not run (no image)")
