"""``radreport bench chaos``: the DICOM service as a hostile network would treat it (issue 16).

Starts the real DICOM service (``python -m services.dicom``, its own SQLite store, no Redis:
studies stay on disk until a queue is there) on free ports and prints one table:

- R3 fuzz: reproducibly mutated instances from every accepted transfer syntax, each sent
  byte for byte; statuses, unexpected failures (0xC211), requests with no answer;
- R5 bombs: a deflate bomb (200 MB from ~200 KB) must be refused before it is inflated;
- R6 flood: a host holding its share of associations idle; another host still served;
- the service's peak resident memory (VmHWM) through all of it, against its cap;
- orphans (files without records and records without files) and tracebacks in its log;
- R14 for this service: canaries in the log.

Then ``run_api`` fuzzes the running stack's API (R10); radreport.bench.chaos_stack checks
the rest on whole stacks. The 10-minute load is ``radreport bench load``.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from radreport.bench.dicom_fuzz import FuzzCase, cases, deflate_bomb, send_raw
from radreport.serving.tritonserver import free_port
from radreport.stack import PROJECT_ROOT

RSS_CAP_MB = 512
PER_PEER = 4


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _associate(port: int, source: str) -> Association:
    ae = AE(ae_title="FLOOD")
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title="RADREPORT", bind_address=(source, 0))


def _echoes(port: int) -> bool:
    """Whether the service answers C-ECHO; asked from an address of its own, so the probes
    do not count against the flood's host (a bare TCP probe would hold a slot until the
    ACSE timeout)."""
    try:
        assoc = _associate(port, "127.0.0.9")
    except OSError:
        return False
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def _flood(port: int) -> tuple[int, bool, bool]:
    """Hold PER_PEER idle associations from one host; (held, next refused, other served)."""
    held = [_associate(port, "127.0.0.1") for _ in range(PER_PEER)]
    extra = _associate(port, "127.0.0.1")
    other = _associate(port, "127.0.0.2")
    served = bool(other.is_established and int(other.send_c_echo().Status) == 0)
    holding = sum(bool(a.is_established) for a in held)
    for assoc in (*held, extra, other):
        if assoc.is_established:
            assoc.release()
    return holding, bool(extra.is_rejected), served


def _orphans(data_dir: Path) -> tuple[int, int]:
    root = data_dir / "dicom" / "instances"
    on_disk = {str(p) for p in root.rglob("*.dcm")} if root.exists() else set()
    with sqlite3.connect(data_dir / "radreport.db") as db:
        recorded = {row[0] for row in db.execute("SELECT path FROM dicom_instances")}
    return len(on_disk - recorded), len(recorded - on_disk)


def run_api(cases: int, seed: int = 0) -> Iterator[str]:
    """R10: schemathesis against the running stack's OpenAPI document."""
    from radreport.bench.api_fuzz import fuzz_api
    from radreport.stack import LocalStack, StackConfig

    with tempfile.TemporaryDirectory() as tmp, LocalStack(
            StackConfig.on_free_ports(Path(tmp))) as stack:
        start = time.monotonic()
        result = fuzz_api(stack.config.gateway_url,
                          stack.config.token("radiologist", "chaos", 86400), cases, seed)
        seconds = time.monotonic() - start
    failures = sum(result.failures.values())
    yield (f"R10 API fuzz: {result.cases} cases over {result.operations} operations "
           f"(seed {seed}, {seconds:.0f} s): {result.server_errors} server errors, "
           f"{failures} check failures {dict(result.failures)}; goal 0 and 0: "
           f"{'yes' if failures == result.server_errors == 0 else 'NO'}")


def run(fuzz_cases: int = 1000, seed: int = 0) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        env = {**os.environ, "RADREPORT_DATA_DIR": str(root / "data"),
               "RADREPORT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
               "RADREPORT_DICOM_PORT": str(port), "RADREPORT_DICOM_METRICS_PORT": "0",
               "RADREPORT_DICOM_MAX_ASSOCIATIONS_PER_PEER": str(PER_PEER)}
        log_path = root / "dicom.log"
        with log_path.open("wb") as log:
            service = subprocess.Popen([sys.executable, "-m", "services.dicom"], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
        try:
            deadline = time.monotonic() + 60
            while not _echoes(port) and time.monotonic() < deadline:
                time.sleep(0.5)
            yield from _measure(root, port, service.pid, fuzz_cases, seed, log_path)
        finally:
            service.terminate()
            service.wait(30)


def _measure(root: Path, port: int, pid: int, fuzz_cases: int, seed: int,
             log_path: Path) -> Iterator[str]:
    held, refused, served = _flood(port)  # first: no earlier association is winding down
    start = time.monotonic()
    statuses: Counter[int | None] = Counter()
    for case in cases(root / "cases", fuzz_cases, seed):
        statuses[send_raw("127.0.0.1", port, case)] += 1
    fuzz_s = time.monotonic() - start
    bomb = send_raw("127.0.0.1", port, FuzzCase(
        "deflate bomb", deflate_bomb(root / "bomb.dcm"), DeflatedExplicitVRLittleEndian))
    rss = _peak_rss_mb(pid)
    files_without, records_without = _orphans(root / "data")
    log = log_path.read_text(errors="replace")
    answered = sum(n for s, n in statuses.items() if s not in (None, -1))
    rows = [
        ("R3 fuzz cases sent (seed)", f"{answered} of {fuzz_cases} ({seed})", "all answered",
         answered == fuzz_cases - statuses[-1]),
        ("R3 success / cannot understand / out of resources",
         f"{statuses[0x0000]} / {statuses[0xC210]} / {statuses[0xA700]}", "-", True),
        ("R3 unexpected failure (0xC211) / no status", f"{statuses[0xC211]} / {statuses[None]}",
         "0 / 0", statuses[0xC211] == 0 and statuses[None] == 0),
        ("R3 not sendable by the peer itself", str(statuses[-1]), "-", True),
        ("R3 time", f"{fuzz_s:.0f} s ({1000 * fuzz_s / max(1, fuzz_cases):.0f} ms/case)", "-",
         True),
        ("R5 deflate bomb (200 MB from ~200 KB)", f"{bomb:#06x}" if bomb else str(bomb),
         "0xa700", bomb == 0xA700),
        ("R6 idle associations held by one host / its next refused / another host served",
         f"{held} / {refused} / {served}", f"{PER_PEER} / True / True",
         held == PER_PEER and refused and served),
        ("peak RSS of the DICOM service", f"{rss:.0f} MB", f"<= {RSS_CAP_MB} MB",
         rss <= RSS_CAP_MB),
        ("orphan files / records without files", f"{files_without} / {records_without}",
         "0 / 0", files_without == records_without == 0),
        ("tracebacks in the service log", str(log.count("Traceback")), "0",
         "Traceback" not in log),
    ]
    width = max(len(r[0]) for r in rows)
    yield f"{'figure':<{width}}  {'measured':<24}  {'goal':<14}  met"
    for figure, value, goal, met in rows:
        yield f"{figure:<{width}}  {value:<24}  {goal:<14}  {'yes' if met else 'NO'}"
