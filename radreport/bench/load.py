"""``radreport bench load``: a steady stream of studies for minutes on end (issue 16, R13).

Posts studies asynchronously at a fixed rate (twice the nominal rate by default) to a stack
on free ports, for the given time, and measures: answers that were not 202 or 200, reports
not completed once, the deepest any stage queue got (sampled every second), and each
process's resident memory after the first minute against the end (flat means it did not
keep growing). Nominal is one study every 8 s (450 an hour, a busy hospital's chest
radiographs); the 2-core development machine is what it was written on.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
from radreport.stack import LocalStack, StackConfig
from services.common.queue import STAGE_QUEUES
from services.common.schemas import ReportStatus
from services.common.store import Report, Store

NOMINAL_PER_S = 1 / 8


@dataclass
class LoadResult:
    sent: int = 0
    errors: list[int] = field(default_factory=list)  # HTTP statuses that were not accepted
    completed_once: int = 0
    unfinished: int = 0
    max_queue: int = 0
    rss_mb: dict[str, tuple[float, float]] = field(default_factory=dict)  # after warm-up, end
    seconds: float = 0.0

    @property
    def memory_growth_mb(self) -> float:
        return max((end - start for start, end in self.rss_mb.values()), default=0.0)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (a worker's pool), in MB."""
    total = 0.0
    for process in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except FileNotFoundError:
            continue
    return total


def _children(pid: int) -> list[int]:
    try:
        direct = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []
    return direct + [g for c in direct for g in _children(c)]


def wait_finished(store: Store, report_ids: list[str], timeout_s: float,
                  ) -> dict[str, Report | None]:
    """The reports once all are completed or failed, or as they stand after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        reports = {i: store.get(i) for i in report_ids}
        if time.monotonic() >= deadline or all(
                r is not None and ReportStatus(r.status).finished for r in reports.values()):
            return reports
        time.sleep(0.5)


def wait_study_reported(store: Store, study_id: str, timeout_s: float) -> list[Report]:
    """The study's reports once one is completed, or as they stand after ``timeout_s``
    (a study pushed by DICOM has no report id to wait for)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reports = store.list_for_study(study_id)
        if time.monotonic() >= deadline or any(r.status == "completed" for r in reports):
            return reports
        time.sleep(0.5)


def run_load(stack: LocalStack, studies: list[Path], rate_per_s: float, seconds: float,
             warmup_s: float = 60.0) -> LoadResult:
    config = stack.config
    result = LoadResult()
    client = redis.Redis.from_url(config.redis_url)
    stop = threading.Event()

    def watch_queues() -> None:
        while not stop.wait(1.0):
            depth = sum(int(client.llen(q)) for q in STAGE_QUEUES.values())
            result.max_queue = max(result.max_queue, depth)

    watcher = threading.Thread(target=watch_queues, daemon=True)
    watcher.start()
    headers = {"Authorization": f"Bearer {config.token('service', 'load', 86400)}",
               "Prefer": "respond-async"}
    report_ids: list[str] = []
    start = time.monotonic()
    warm: dict[str, float] = {}
    with httpx.Client(base_url=config.gateway_url, timeout=60, headers=headers) as api:
        while (elapsed := time.monotonic() - start) < seconds:
            if not warm and elapsed >= min(warmup_s, seconds / 2):
                warm = {name: rss_mb(pid) for name, pid in stack.pids().items()}
            path = studies[result.sent % len(studies)]
            answer = api.post("/api/v1/reports/generate", data={"study_id": f"LOAD-{result.sent}"},
                              files={"file": (path.name, path.read_bytes())})
            result.sent += 1
            if answer.status_code in (200, 202):
                report_ids.append(answer.json()["report_id"])
            else:
                result.errors.append(answer.status_code)
            time.sleep(max(0.0, start + result.sent / rate_per_s - time.monotonic()))
    result.seconds = time.monotonic() - start
    store = Store(f"sqlite:///{config.data_dir / 'radreport.db'}")
    reports = wait_finished(store, report_ids, 300)
    stop.set()
    end = {name: rss_mb(pid) for name, pid in stack.pids().items()}
    result.rss_mb = {name: (warm.get(name, end[name]), end[name]) for name in end}
    for report_id, report in reports.items():
        history = [c.status for c in store.history(report_id)]
        if report is not None and report.status == "completed" and history.count(
                "completed") == 1:
            result.completed_once += 1
        elif report is None or report.status != "completed":
            result.unfinished += 1
    return result


def studies_for_load(folder: Path, count: int = 8) -> list[Path]:
    return [write_study_dicom(generate_study(700 + i, 512), folder, DicomOptions(
        "CR", "MONOCHROME1", 12, "1.2.840.10008.1.2.1")) for i in range(count)]


def run(minutes: float = 10.0, factor: float = 2.0) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        studies = studies_for_load(root / "studies")
        with LocalStack(StackConfig.on_free_ports(root / "stack")) as stack:
            result = run_load(stack, studies, NOMINAL_PER_S * factor, minutes * 60)
    lines = [f"{factor:g}x nominal ({3600 * NOMINAL_PER_S * factor:.0f} studies/hour) for "
             f"{result.seconds / 60:.1f} min: {result.sent} sent",
             f"  not accepted: {len(result.errors)} {sorted(set(result.errors))}",
             f"  completed exactly once: {result.completed_once}; unfinished or failed: "
             f"{result.unfinished}",
             f"  deepest stage queues (all stages, sampled each second): {result.max_queue}",
             f"  resident memory after warm-up -> end (MB), growth at most "
             f"{result.memory_growth_mb:.0f} MB:"]
    lines += [f"    {name}: {a:.0f} -> {b:.0f}" for name, (a, b) in sorted(result.rss_mb.items())]
    return lines
