"""Start and stop a real ``tritonserver`` process on CPU, as the local stack and tests do.

The binary, its Python backend and that backend's Python environment are installed by
``deploy/triton/install_cpu_server.sh`` (under ``.venv/tritonserver`` by default). What it
takes to run them here is in ``shared/notes/triton-on-cpu.md``: the backend directory must
hold the stub for our Python, the stub must load the running interpreter's libpython
(``LD_LIBRARY_PATH``), and our ``model.py`` finds its packages through ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_INSTALL = PROJECT_ROOT / ".venv" / "tritonserver"
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 now (a readiness probe)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class TritonNotInstalledError(RuntimeError):
    pass


_HANDED_OUT: set[int] = set()


def _ephemeral_floor() -> int:
    """The lowest port the kernel picks for outgoing connections (Linux; else IANA's)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


def free_port() -> int:
    """A loopback port free now, below the ephemeral range.

    A port the kernel hands out for ``bind(0)`` is one it may also give to any outgoing
    connection before our server binds it (with a stack of a dozen servers and gRPC
    clients, it did). Ports below that range are never picked for connections, and this
    process never hands one out twice.
    """
    low = 20000
    high = max(low + 1000, _ephemeral_floor())
    while True:
        port = secrets.randbelow(high - low) + low
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


@dataclass
class TritonServer:
    """One ``tritonserver`` on loopback ports; a context manager that waits until ready."""

    repository: Path = DEFAULT_REPOSITORY
    install: Path = DEFAULT_INSTALL
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    models: tuple[str, ...] = ()  # load only these (explicit mode); empty: the whole repository
    process: subprocess.Popen[bytes] | None = None

    @property
    def binary(self) -> Path:
        return self.install / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        return [
            str(self.binary), f"--model-repository={self.repository}",
            f"--backend-directory={self.binary.parents[1] / 'backends'}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}", "--exit-timeout-secs=5",
            *(["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]
              if self.models else []),
        ]

    def environment(self) -> dict[str, str]:
        site_packages = next((self.install / "env" / "lib").glob("python3*/site-packages"), None)
        if site_packages is None:
            raise TritonNotInstalledError(f"no backend environment under {self.install}/env")
        paths = [str(site_packages), str(PROJECT_ROOT)]
        return {**os.environ, **self.env,
                "LD_LIBRARY_PATH": str(sysconfig.get_config_var("LIBDIR")),
                "PYTHONPATH": os.pathsep.join(paths)}

    def start(self, timeout: float = 120.0) -> TritonServer:
        if not self.binary.is_file():
            raise TritonNotInstalledError(
                f"{self.binary} not found: run deploy/triton/install_cpu_server.sh")
        log = self.log_path.open("wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), env=self.environment(), stdout=log,
                                        stderr=subprocess.STDOUT, cwd=self.install)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}; "
                                   f"see {self.log_path or 'its output'}")
            if http_ok(url):
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
