"""``radreport up`` supervises what it starts: a worker killed outright comes back and the
stack keeps reporting; ``radreport down`` stops what is running, restarted ones included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
from radreport.serving.tritonserver import free_port
from radreport.stack import StackConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_worker_is_restarted_and_down_stops_everything(tmp_path: Path) -> None:
    base = free_port()
    env = {**os.environ, "RADREPORT_RUN_DIR": str(tmp_path / "run"),
           "RADREPORT_DATA_DIR": str(tmp_path / "data"),
           "RADREPORT_GATEWAY_PORT": str(free_port()),
           "RADREPORT_GATEWAY_GRPC_PORT": str(free_port()),
           "RADREPORT_REDIS_PORT": str(free_port()),
           "RADREPORT_TRITON_GRPC_PORT": str(free_port()),
           "RADREPORT_TRITON_HTTP_PORT": str(free_port()),
           "RADREPORT_TRITON_METRICS_PORT": str(free_port()),
           "RADREPORT_DICOM_PORT": str(free_port()),
           "RADREPORT_DICOM_METRICS_PORT": str(free_port()),
           "RADREPORT_WORKER_METRICS_BASE_PORT": str(base)}

    def radreport(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "radreport.cli", *args], env=env,
                              capture_output=True, text=True, timeout=300, check=False)

    state = tmp_path / "run" / "stack.json"
    pids: dict[str, int] = {}
    now: dict[str, int] = {}
    started = radreport("up")
    try:
        assert started.returncode == 0, started.stderr
        pids = json.loads(state.read_text())
        assert {"supervisor", "gateway", "worker-inference", "redis"} <= set(pids)
        os.kill(pids["worker-inference"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = json.loads(state.read_text())
            if now["worker-inference"] != pids["worker-inference"] and _alive(
                    now["worker-inference"]):
                break
            time.sleep(0.5)
        assert now["worker-inference"] != pids["worker-inference"], "not restarted"

        gateway = f"http://127.0.0.1:{env['RADREPORT_GATEWAY_PORT']}"
        token = StackConfig(run_dir=tmp_path / "run", data_dir=tmp_path / "data"
                            ).token("service", "supervision-test")
        study = write_study_dicom(generate_study(41, 384), tmp_path, DicomOptions(
            "CR", "MONOCHROME1", 12, str(ExplicitVRLittleEndian)))
        answer = httpx.post(f"{gateway}/api/v1/reports/generate", timeout=120,
                            headers={"Authorization": f"Bearer {token}"},
                            data={"study_id": "SUPERVISED-1"},
                            files={"file": ("s.dcm", study.read_bytes())})
        assert answer.status_code == 200 and answer.json()["status"] == "completed"
    finally:
        stopped = radreport("down")
    assert stopped.returncode == 0, stopped.stderr
    final = {**pids, **now}
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in final.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [name for name, pid in final.items() if _alive(pid)]
    assert not state.exists()
