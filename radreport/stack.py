"""The local stack as plain processes: Redis, tritonserver, workers, DICOM gateway, gateway.

``radreport up`` starts it in the background (state in ``<run_dir>/stack.json``, logs in
``<run_dir>/logs/``) and ``radreport down`` stops it; the integration tests start the same
stack on free loopback ports in a temporary folder. Ports and paths come from
``RADREPORT_*`` variables, defaulting to the embedded local setup.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from radreport.serving.tritonserver import (
    DEFAULT_INSTALL,
    PROJECT_ROOT,
    TritonServer,
    free_port,
    http_ok,
)

WORKER_SERVICES = ("preprocess", "inference", "grounding", "fhir")
SUPERVISOR = "supervisor"


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass
class StackConfig:
    run_dir: Path
    data_dir: Path
    gateway_port: int = 8080
    grpc_port: int = 50051  # the gateway's gRPC API
    redis_port: int = 6380  # not 6379: a machine's own Redis may be there
    triton_grpc_port: int = 8001
    triton_http_port: int = 8000
    triton_metrics_port: int = 8002
    dicom_port: int = 11112
    dicom_metrics_port: int = 9102
    worker_metrics_ports: dict[str, int] = field(default_factory=lambda: {
        service: 9110 + i for i, service in enumerate(WORKER_SERVICES)})
    triton_install: Path = DEFAULT_INSTALL
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> StackConfig:
        var = PROJECT_ROOT / "var"
        return cls(run_dir=Path(os.environ.get("RADREPORT_RUN_DIR", var / "run")),
                   data_dir=Path(os.environ.get("RADREPORT_DATA_DIR", var / "data")),
                   gateway_port=_env_int("RADREPORT_GATEWAY_PORT", 8080),
                   grpc_port=_env_int("RADREPORT_GATEWAY_GRPC_PORT", 50051),
                   redis_port=_env_int("RADREPORT_REDIS_PORT", 6380),
                   triton_grpc_port=_env_int("RADREPORT_TRITON_GRPC_PORT", 8001),
                   triton_http_port=_env_int("RADREPORT_TRITON_HTTP_PORT", 8000),
                   triton_metrics_port=_env_int("RADREPORT_TRITON_METRICS_PORT", 8002),
                   dicom_port=_env_int("RADREPORT_DICOM_PORT", 11112),
                   dicom_metrics_port=_env_int("RADREPORT_DICOM_METRICS_PORT", 9102),
                   worker_metrics_ports={
                       service: _env_int("RADREPORT_WORKER_METRICS_BASE_PORT", 9110) + i
                       for i, service in enumerate(WORKER_SERVICES)},
                   triton_install=Path(os.environ.get("RADREPORT_TRITON_INSTALL",
                                                      DEFAULT_INSTALL)))

    @classmethod
    def on_free_ports(cls, root: Path) -> StackConfig:
        return cls(run_dir=root / "run", data_dir=root / "data", gateway_port=free_port(),
                   grpc_port=free_port(), redis_port=free_port(), triton_grpc_port=free_port(),
                   triton_http_port=free_port(), triton_metrics_port=free_port(),
                   dicom_port=free_port(), dicom_metrics_port=free_port(),
                   worker_metrics_ports={s: free_port() for s in WORKER_SERVICES})

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def key_dir(self) -> Path:
        return self.data_dir / "keys"

    def token(self, role: str, subject: str | None = None, ttl_s: int | None = None) -> str:
        """A bearer token the stack's gateway accepts (signed with its local key)."""
        from services.common.auth import AuthSettings, Role, issue_token

        return issue_token(subject or f"local-{role}", Role(role),
                           AuthSettings(key_dir=self.key_dir), ttl_s)

    def environment(self) -> dict[str, str]:
        """What every service process is started with."""
        return {**os.environ,
                "RADREPORT_DATA_DIR": str(self.data_dir),
                "RADREPORT_REDIS_URL": self.redis_url,
                "RADREPORT_TRITON_URL": f"127.0.0.1:{self.triton_grpc_port}",
                "RADREPORT_PUBLIC_BASE_URL": self.gateway_url,
                "RADREPORT_GATEWAY_HOST": "127.0.0.1",
                "RADREPORT_GATEWAY_PORT": str(self.gateway_port),
                "RADREPORT_GATEWAY_GRPC_HOST": "127.0.0.1",
                "RADREPORT_GATEWAY_GRPC_PORT": str(self.grpc_port),
                "RADREPORT_DICOM_PORT": str(self.dicom_port),
                "RADREPORT_DICOM_METRICS_PORT": str(self.dicom_metrics_port),
                "RADREPORT_GATEWAY_IMAGE_ROOT": os.environ.get(
                    "RADREPORT_GATEWAY_IMAGE_ROOT", str(self.data_dir / "images")),
                **self.extra_env}


class StackError(RuntimeError):
    pass


class LocalStack:
    """Start, find and stop the stack's processes; a context manager for tests."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.state_file = config.run_dir / "stack.json"
        self.ready_file = config.run_dir / "stack.ready"  # written once a supervisor is up
        self.logs = config.run_dir / "logs"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.supervisor_pid: int | None = None  # set in the supervising process

    def _spawn(self, name: str, command: list[str], env: dict[str, str],
               cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=cwd or PROJECT_ROOT, start_new_session=True)
        self.processes[name] = process
        self._save()
        return process

    def _save(self) -> None:
        pids = {n: p.pid for n, p in self.processes.items()}
        if self.supervisor_pid is not None:
            pids[SUPERVISOR] = self.supervisor_pid
        self.state_file.write_text(json.dumps(pids))

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server not found: run `make setup` (Debian redis-server)")
        redis_dir = self.config.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        self._spawn("redis", [binary, "--port", str(self.config.redis_port), "--bind",
                              "127.0.0.1", "--dir", str(redis_dir), "--appendonly", "yes",
                              "--save", "", "--protected-mode", "yes"], dict(os.environ))

    def start_triton(self) -> None:
        server = TritonServer(install=self.config.triton_install,
                              http_port=self.config.triton_http_port,
                              grpc_port=self.config.triton_grpc_port,
                              metrics_port=self.config.triton_metrics_port,
                              models=("radreport_report_stream",),
                              env=self.config.extra_env)
        if not server.binary.is_file():
            raise StackError(f"{server.binary} not found: run `make setup`")
        self._spawn("triton", server.command(), server.environment(), cwd=server.install)

    def start_workers(self) -> None:
        for service in WORKER_SERVICES:
            self.start_worker(service)

    def start_worker(self, service: str) -> None:
        env = {**self.config.environment(),
               "RADREPORT_WORKER_METRICS_PORT": str(self.config.worker_metrics_ports[service]),
               "PROMETHEUS_MULTIPROC_DIR": str(self.config.run_dir / "metrics" / service)}
        self._spawn(f"worker-{service}", [sys.executable, "-m", f"services.{service}"], env)

    def start_process(self, name: str) -> None:
        """(Re)start one of the stack's processes by its name."""
        if name.startswith("worker-"):
            self.start_worker(name.removeprefix("worker-"))
            return
        starters = {"redis": self.start_redis, "triton": self.start_triton,
                    "dicom": self.start_dicom, "gateway": self.start_gateway}
        starters[name]()

    def supervise(self, stop: threading.Event, period_s: float = 1.0,
                  min_restart_s: float = 5.0) -> None:
        """Restart each process that dies, until ``stop`` is set; then stop them all.

        A process that keeps dying is restarted at most once per ``min_restart_s``.
        """
        restarted: dict[str, float] = {}
        try:
            while not stop.wait(period_s):
                for name, process in list(self.processes.items()):
                    if process.poll() is None:
                        continue
                    if time.monotonic() - restarted.get(name, -min_restart_s) < min_restart_s:
                        continue
                    print(f"{name} exited with {process.returncode}; restarting it",
                          file=sys.stderr, flush=True)
                    restarted[name] = time.monotonic()
                    self.start_process(name)
        finally:
            self.down()

    def start_dicom(self) -> None:
        self._spawn("dicom", [sys.executable, "-m", "services.dicom"], self.config.environment())

    def start_gateway(self) -> None:
        self._spawn("gateway", [sys.executable, "-m", "services.gateway"],
                    self.config.environment())

    def up(self, timeout: float = 180.0) -> None:
        """Start everything and wait until the gateway says it is ready."""
        if self.running():
            raise StackError(f"a stack is already running (state in {self.state_file})")
        self.logs.mkdir(parents=True, exist_ok=True)
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_redis()
            self.start_triton()
            self.start_workers()
            self.start_dicom()
            self.start_gateway()
            self.wait_ready(timeout)
        except BaseException:
            self.down()
            raise

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise StackError(f"{name} exited with {process.returncode}; see "
                                     f"{self.logs / (name + '.log')}")
            if (http_ok(f"{self.config.gateway_url}/readyz")
                    and _listening(self.config.dicom_port)):
                return
            time.sleep(0.5)
        raise StackError(f"the stack was not ready after {timeout:.0f} s; logs in {self.logs}")

    def pids(self) -> dict[str, int]:
        if self.processes:
            return {n: p.pid for n, p in self.processes.items()
                     if n != SUPERVISOR and p.poll() is None}
        if self.state_file.is_file():
            return {str(k): int(v) for k, v in json.loads(self.state_file.read_text()).items()}
        return {}

    def running(self) -> bool:
        return any(_alive(pid) for pid in self.pids().values())

    def down(self, timeout: float = 20.0) -> None:
        """Stop the gateway first, then workers (they finish their task), Triton, Redis.

        A stack started by ``radreport up`` is stopped through its supervisor, so that
        nothing it supervises is restarted behind our back; what is left is stopped here.
        """
        pids = self.pids()
        supervisor = pids.pop(SUPERVISOR, None)
        if supervisor is not None and supervisor != os.getpid() and _alive(supervisor):
            _stop_group(supervisor, timeout * 3)
            pids = {n: p for n, p in pids.items() if _alive(p)}
        order = ["gateway", "dicom", *(f"worker-{s}" for s in WORKER_SERVICES), "triton",
                 "redis"]
        for name in sorted(pids, key=lambda n: order.index(n) if n in order else 0):
            _stop_group(pids[name], timeout)
            if name in self.processes:
                self.processes[name].wait()
        self.processes.clear()
        self.state_file.unlink(missing_ok=True)
        self.ready_file.unlink(missing_ok=True)

    def __enter__(self) -> LocalStack:
        self.up()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group (a worker and its pool), SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline:
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped = 0
            if reaped or not _alive(pid):
                return
            time.sleep(0.1)


def start_supervised(config: StackConfig, timeout: float) -> LocalStack:
    """Start the stack under a supervisor process of its own (``radreport up``); return once
    it is ready. The supervisor restarts what dies and stops it all on SIGTERM."""
    stack = LocalStack(config)
    if stack.running():
        raise StackError(f"a stack is already running (state in {stack.state_file})")
    stack.logs.mkdir(parents=True, exist_ok=True)
    stack.ready_file.unlink(missing_ok=True)  # left by a supervisor that was killed
    log = (stack.logs / "supervisor.log").open("ab")
    supervisor = subprocess.Popen([sys.executable, "-m", "radreport.stack"], stdout=log,
                                  stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                  start_new_session=True, env=config.environment())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervisor.poll() is not None:
            raise StackError(f"the stack did not start; see {stack.logs}")
        if stack.ready_file.is_file() and SUPERVISOR in stack.pids():
            return stack  # the supervisor has seen every process ready and now watches them
        time.sleep(0.5)
    _stop_group(supervisor.pid, 20)
    raise StackError(f"the stack was not ready after {timeout:.0f} s; logs in {stack.logs}")


def main() -> None:
    """The supervisor: start the stack, restart what dies, stop everything on SIGTERM."""
    stack = LocalStack(StackConfig.from_env())
    stack.supervisor_pid = os.getpid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stack.up()
    stack.ready_file.write_text(str(os.getpid()))
    stack.supervise(stop)


if __name__ == "__main__":
    main()
