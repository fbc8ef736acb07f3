"""The hashed lock files (deploy/requirements/lock.sh) agree with what they lock: every
requirement of pyproject.toml and of the Triton backend's requirements-cpu.in is pinned, to a
version it allows, with hashes; the files agree with each other; PyTorch stays out of them."""

from __future__ import annotations

import re
import tomllib
from functools import cache
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
LOCKS = ROOT / "deploy" / "requirements"
RUNTIME, DEV, GRPC_BUILD = LOCKS / "runtime.txt", LOCKS / "dev.txt", LOCKS / "grpc-build.txt"
TRITON_IN = ROOT / "deploy" / "triton" / "requirements-cpu.in"
TRITON_LOCK = ROOT / "deploy" / "triton" / "requirements-cpu.txt"
# The platform lock.sh resolves for (CPython 3.11 on Linux x86_64).
ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
               "implementation_name": "cpython", "platform_python_implementation": "CPython"}
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")


@cache
def pins(lock: Path) -> dict[str, str]:
    """name -> version of every pin; each pin must carry at least one sha256 hash."""
    found: dict[str, str] = {}
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text())
    for entry in entries:
        match = PIN.match(entry)
        if not match:
            continue
        assert "--hash=sha256:" in entry, f"{lock.name}: {match.group(1)} has no hash"
        found[canonicalize_name(match.group(1))] = match.group(2)
    assert found, f"{lock.name} pins nothing"
    return found


def project() -> dict[str, list[Requirement]]:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"base": table["dependencies"], **table["optional-dependencies"]}
    return {group: [Requirement(line) for line in lines] for group, lines in groups.items()}


def applies(requirement: Requirement, extra: str = "") -> bool:
    marker = requirement.marker
    return marker is None or marker.evaluate({**ENVIRONMENT, "extra": extra})


def extra_requirements(requirement: Requirement) -> list[Requirement]:
    """What the requirement's extras (e.g. uvicorn[standard]) add, from installed metadata."""
    try:
        lines = requires(requirement.name) or []
    except PackageNotFoundError:
        pytest.fail(f"{requirement.name} is not installed: run `make setup`")
    added = [Requirement(line) for line in lines]
    return [r for r in added if any(applies(r, extra) and r.marker is not None
                                    for extra in requirement.extras)]


def assert_pinned(requirement: Requirement, lock: Path) -> None:
    locked = pins(lock)
    name = canonicalize_name(requirement.name)
    assert name in locked, f"{requirement} is not in {lock.name}: run deploy/requirements/lock.sh"
    assert requirement.specifier.contains(locked[name], prereleases=True), (
        f"{lock.name} pins {name}=={locked[name]}, which {requirement} excludes: "
        "run deploy/requirements/lock.sh")
    for added in extra_requirements(requirement):
        assert_pinned(added, lock)


@pytest.mark.parametrize("group", ["base", "dev", "train"])
def test_every_project_requirement_is_locked(group: str) -> None:
    lock = RUNTIME if group == "base" else DEV
    for requirement in project()[group]:
        if not applies(requirement):
            continue
        if canonicalize_name(requirement.name) == "torch":
            continue  # pinned by version only, below
        assert_pinned(requirement, lock)
        if group == "base":
            assert_pinned(requirement, DEV)


def test_pytorch_is_pinned_by_version_and_kept_out_of_the_locks() -> None:
    torch = [r for r in project()["train"] if r.name == "torch"]
    assert len(torch) == 1 and str(torch[0].specifier).startswith("=="), torch
    cuda = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
    for lock in (RUNTIME, DEV, GRPC_BUILD, TRITON_LOCK):
        assert not [name for name in pins(lock) if cuda.match(name)], lock.name


def test_the_locks_agree_with_each_other() -> None:
    """make setup, the runtime image and its gRPC build step install the same versions."""
    runtime, dev, grpc_build = pins(RUNTIME), pins(DEV), pins(GRPC_BUILD)
    assert runtime.items() <= dev.items(), sorted(set(runtime.items()) - set(dev.items()))
    shared = grpc_build.keys() & runtime.keys()
    assert {"grpcio", "protobuf"} <= shared
    assert all(grpc_build[name] == runtime[name] for name in shared)
    assert grpc_build["grpcio-tools"] == dev["grpcio-tools"]


def test_the_triton_backend_environment_is_locked() -> None:
    for line in TRITON_IN.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert_pinned(Requirement(line), TRITON_LOCK)
    assert pins(TRITON_LOCK)["numpy"].startswith("1."), "the backend stub needs NumPy 1.x"


def test_installs_use_the_locks() -> None:
    """make setup, both images and the Triton installer install from the locks, with hashes."""
    bootstrap = (ROOT / "deploy" / "local" / "bootstrap.sh").read_text()
    assert "--require-hashes --no-deps -r deploy/requirements/dev.txt" in bootstrap
    runtime = (ROOT / "deploy" / "docker" / "runtime.Dockerfile").read_text()
    assert "--require-hashes -r deploy/requirements/runtime.txt" in runtime
    assert "--require-hashes -r deploy/requirements/grpc-build.txt" in runtime
    installer = (ROOT / "deploy" / "triton" / "install_cpu_server.sh").read_text()
    assert "REQUIREMENTS=deploy/triton/requirements-cpu.txt" in installer
    assert '--require-hashes -r "$REQUIREMENTS"' in installer
