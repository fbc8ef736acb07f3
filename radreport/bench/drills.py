"""Restart drills under load (issue 16: R8 Redis, R9 Triton, PostgreSQL): a dependency is
killed while reports are in flight, then brought back. Used by the tests (fast re-driver
settings) and by ``radreport bench chaos`` (the defaults), which prints their figures.

Each drill measures what the issue promises: while the dependency is away the API answers
503 with Retry-After and creates nothing (Redis, PostgreSQL), or reports wait without spending
their attempts (Triton); once it is back, every accepted report completes exactly once, how
long that took, and whether /readyz says so.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
import redis
from pydicom.uid import generate_uid

from radreport.bench.load import wait_finished, wait_study_reported
from radreport.serving.tritonserver import free_port
from radreport.stack import LocalStack
from services.common.queue import DEAD_LETTER_KEY
from services.common.schemas import ReportStatus
from services.common.store import Store


@dataclass
class DrillResult:
    name: str
    accepted: int = 0  # reports accepted before the fault
    unfinished_at_fault: int = 0
    refused_while_down: int = 0  # 503 with Retry-After
    created_while_down: int = 0  # rows the refused requests left behind (must be 0)
    waiting_while_down: int = 0  # Triton: reports parked at inference, attempts unspent
    dicom_push_accepted: bool | None = None  # Redis: a C-STORE during the outage
    recovered_s: float = 0.0  # from the dependency's return until every report finished
    completed_once: int = 0
    completed_twice: int = 0
    unfinished: int = 0
    dead_letters: int = 0
    redriven: int = 0  # reports the re-driver queued again (its metric)
    ready_again: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        """Nothing lost, nothing twice, nothing half-made, and ready again."""
        return (self.unfinished == 0 and self.completed_twice == 0
                and self.completed_once == self.accepted and self.created_while_down == 0
                and self.dead_letters == 0 and self.ready_again
                and self.dicom_push_accepted is not False)


def _post_async(api: httpx.Client, study: Path, study_id: str) -> str:
    answer = api.post("/api/v1/reports/generate", headers={"Prefer": "respond-async"},
                      data={"study_id": study_id}, files={"file": ("s.dcm", study.read_bytes())})
    answer.raise_for_status()
    return str(answer.json()["report_id"])


def _refused(api: httpx.Client, study: Path, study_id: str) -> bool:
    answer = api.post("/api/v1/reports/generate", data={"study_id": study_id},
                      files={"file": ("s.dcm", study.read_bytes())})
    return answer.status_code == 503 and int(answer.headers.get("Retry-After", "0")) > 0


def _settle(result: DrillResult, store: Store, report_ids: list[str], timeout_s: float,
            api: httpx.Client, redis_url: str) -> None:
    """Wait for every report, then count how each ended."""
    start = time.monotonic()
    reports = wait_finished(store, report_ids, timeout_s)
    result.recovered_s = time.monotonic() - start
    for report_id, report in reports.items():
        completions = [c.status for c in store.history(report_id)].count("completed")
        if report is None or not ReportStatus(report.status).finished:
            result.unfinished += 1
        elif completions == 1 and report.status == "completed":
            result.completed_once += 1
        elif completions > 1:
            result.completed_twice += 1
    result.dead_letters = int(redis.Redis.from_url(redis_url).llen(DEAD_LETTER_KEY))
    result.redriven = int(sum(float(line.rsplit(" ", 1)[1])
                              for line in api.get("/metrics").text.splitlines()
                              if line.startswith("radreport_reports_redriven_total{")))
    deadline = time.monotonic() + 15
    while api.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    result.ready_again = api.get("/readyz").status_code == 200


def _unfinished(store: Store, report_ids: list[str]) -> int:
    return sum(1 for i in report_ids if (r := store.get(i)) is not None
               and r.status != "completed")


def _kill(stack: LocalStack, name: str) -> None:
    process = stack.processes[name]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def redis_drill(stack: LocalStack, api: httpx.Client, store: Store, study: Path,
                count: int = 6, timeout_s: float = 180) -> DrillResult:
    """R8: Redis SIGKILLed under load and started again empty (its queues gone for good)."""
    result = DrillResult("R8 Redis killed, restarted empty")
    tag = generate_uid()[-8:]
    report_ids = [_post_async(api, study, f"DRILL-REDIS-{tag}-{i}") for i in range(count)]
    result.accepted = len(report_ids)
    _kill(stack, "redis")
    result.unfinished_at_fault = _unfinished(store, report_ids)
    shutil.rmtree(stack.config.data_dir / "redis", ignore_errors=True)
    result.refused_while_down = int(_refused(api, study, f"DRILL-REDIS-{tag}-DOWN"))
    result.created_while_down = len(store.list_for_study(f"DRILL-REDIS-{tag}-DOWN"))
    with tempfile.TemporaryDirectory() as tmp:
        pushed, pushed_study = _fresh_copy(study, Path(tmp) / "s.dcm")
        sent = subprocess.run([shutil.which("storescu") or "storescu", "-aec", "RADREPORT",
                               "127.0.0.1", str(stack.config.dicom_port), str(pushed)],
                              capture_output=True, text=True, timeout=60)
    result.dicom_push_accepted = sent.returncode == 0
    time.sleep(3)
    stack.start_redis()
    _settle(result, store, report_ids, timeout_s, api, stack.config.redis_url)
    if not any(r.status == "completed"
               for r in wait_study_reported(store, pushed_study, timeout_s)):
        result.dicom_push_accepted = False
        result.notes.append("the study pushed during the outage was never reported")
    return result


def _fresh_copy(study: Path, target: Path) -> tuple[Path, str]:
    """The study under new UIDs (a new study for the DICOM gateway), and its Study UID."""
    ds = pydicom.dcmread(study)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(), generate_uid(), generate_uid())
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target)
    return target, str(ds.StudyInstanceUID)


def triton_drill(stack: LocalStack, api: httpx.Client, store: Store, study: Path,
                 count: int = 3, away_s: float = 10, timeout_s: float = 180) -> DrillResult:
    """R9: Triton SIGKILLed; reports sent meanwhile wait at inference without spending
    their attempts, /readyz says 503, and all complete once it is back."""
    result = DrillResult("R9 Triton killed, restarted")
    _kill(stack, "triton")
    tag = generate_uid()[-8:]
    report_ids = [_post_async(api, study, f"DRILL-TRITON-{tag}-{i}") for i in range(count)]
    result.accepted = result.unfinished_at_fault = len(report_ids)
    if api.get("/readyz").status_code != 503:
        result.notes.append("/readyz did not answer 503 with Triton away")
    time.sleep(away_s)  # far past what the attempts with their backoff would take
    result.waiting_while_down = sum(
        1 for i in report_ids if (r := store.get(i)) is not None and r.status == "inferring")
    stack.start_triton()
    _settle(result, store, report_ids, timeout_s, api, stack.config.redis_url)
    return result


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster of its own (initdb in a temporary folder), never the machine's."""

    bin_dir: Path
    data_dir: Path
    port: int

    @classmethod
    def create(cls) -> PostgresCluster:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL is not installed: run `make setup`")
        root = Path(tempfile.mkdtemp(prefix="radreport-pg-"))
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        cluster = cls(Path(found[-1]).parent, root / "data", free_port())
        cluster._run("initdb", "-D", str(cluster.data_dir), "-U", "radreport", "--auth=trust")
        return cluster

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://radreport@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-l",
                  str(self.data_dir.parent / "postgres.log"), "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 "
                  f"-k {self.data_dir.parent}", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def postgres_drill(stack: LocalStack, api: httpx.Client, cluster: PostgresCluster,
                   study: Path, count: int = 5, away_s: float = 3, timeout_s: float = 180,
                   while_down: Callable[[], None] | None = None) -> DrillResult:
    """PostgreSQL crashed (immediate stop) under load and started again; ``while_down``
    runs the caller's own checks during the outage."""
    result = DrillResult("PostgreSQL crashed, restarted")
    store = Store(cluster.url)
    tag = generate_uid()[-8:]
    report_ids = [_post_async(api, study, f"DRILL-PG-{tag}-{i}") for i in range(count)]
    result.accepted = len(report_ids)
    result.unfinished_at_fault = _unfinished(store, report_ids)
    cluster.stop("immediate")  # a crash, not a shutdown
    try:
        result.refused_while_down = int(_refused(api, study, f"DRILL-PG-{tag}-DOWN"))
        if while_down is not None:
            while_down()
        time.sleep(away_s)
    finally:
        cluster.start()
    result.created_while_down = len(store.list_for_study(f"DRILL-PG-{tag}-DOWN"))
    _settle(result, store, report_ids, timeout_s, api, stack.config.redis_url)
    return result
