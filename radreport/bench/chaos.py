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

Then ``run_api`` fuzzes the running stack's API (R10), ``run_hostile`` checks bodies (R12),
SSRF, the review transactions, patient data in logs, metrics and Redis (R14), DICOM TLS
(R16) and decoder bombs (R5), and ``run_drills`` kills Redis
(R8), Triton (R9) and PostgreSQL under load, on stacks with the default re-driver settings,
and prints what came back. The 10-minute load is ``radreport bench load``.
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
from radreport.bench.hostile_api import Check
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


def run_hostile() -> Iterator[str]:
    """R12 bodies, SSRF, transactions and R14 PHI on one stack; R16 TLS on an SCP of its own."""
    import httpx
    from pydicom.uid import ExplicitVRLittleEndian

    from radreport.bench.hostile_api import body_checks, ssrf_checks, transaction_checks
    from radreport.bench.phi_scan import plant_and_scan
    from radreport.data.phantoms import generate_study
    from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
    from radreport.stack import LocalStack, StackConfig

    checks: list[Check] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = write_study_dicom(generate_study(12, 512), root / "study", DicomOptions(
            "DX", "MONOCHROME1", 12, str(ExplicitVRLittleEndian)))
        config = StackConfig.on_free_ports(root / "stack")
        with LocalStack(config) as stack, httpx.Client(
                base_url=config.gateway_url, timeout=120,
                headers={"Authorization": f"Bearer {config.token('service', 'chaos')}"}
        ) as api, httpx.Client(base_url=config.gateway_url, timeout=120, headers={
                "Authorization": f"Bearer {config.token('radiologist', 'chaos-rad')}"}
        ) as reviewer:
            checks += body_checks("127.0.0.1", config.gateway_port,
                                  config.token("service", "chaos"))
            checks += ssrf_checks(api)
            checks += transaction_checks(api, reviewer, study)
            scan = plant_and_scan(stack, root / "phi")
            checks.append(Check(
                "R14 canaries in logs, /metrics and Redis",
                f"{len(scan.leaks)} in {scan.scanned_bytes / 1e6:.1f} MB over {scan.places} "
                "places", "0", not scan.leaks and scan.pushed_reported))
        checks.append(_tls_check(root / "pki"))
        checks += _decoder_bombs(root / "bombs")
    width = max(len(c.figure) for c in checks)
    yield f"{'figure':<{width}}  {'measured':<36}  {'goal':<16}  met"
    for c in checks:
        yield f"{c.figure:<{width}}  {c.measured:<36}  {c.goal:<16}  {'yes' if c.met else 'NO'}"


def _decoder_bombs(folder: Path) -> list[Check]:
    """R5 in preprocessing: each bomb refused, and how much memory the refusal took."""
    import tracemalloc

    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

    from radreport.bench.dicom_fuzz import codestream_bomb, png_dimension_bomb
    from services.preprocess.imaging import InputRefused, load_image

    folder.mkdir(parents=True)
    bombs = {"R5 PNG declaring 20,000 x 20,000 px": png_dimension_bomb(folder / "bomb.png"),
             "R5 JPEG 2000 frame 9x its header": codestream_bomb(
                 folder / "j2k.dcm", str(JPEG2000Lossless)),
             "R5 JPEG-LS frame 9x its header": codestream_bomb(
                 folder / "jls.dcm", str(JPEGLSLossless))}
    checks = []
    for figure, path in bombs.items():
        tracemalloc.start()
        try:
            load_image(path)
            reason = "decoded"
        except InputRefused as refused:
            reason = refused.reason
        peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        checks.append(Check(figure, f"{reason}, peak {peak_mb:.1f} MB", "refused, < 10 MB",
                            reason != "decoded" and peak_mb < 10))
    return checks


def _tls_check(folder: Path) -> Check:
    """R16: the SCP with the hospital's CA serves its modality, refuses a stranger and none."""
    from radreport.bench.pki import echo_over_tls, hospital_pki
    from services.common.store import Store
    from services.dicom.scp import StorageSCP
    from services.dicom.settings import DicomSettings

    folder.mkdir(parents=True)
    pki = hospital_pki(folder)
    store = Store(f"sqlite:///{folder / 'reports.db'}")
    store.migrate()
    scp = StorageSCP(DicomSettings(port=free_port(), tls_certificate=pki["server"][0],
                                   tls_private_key=pki["server"][1],
                                   tls_ca_certificates=pki["ca"][0]), store, folder / "instances")
    scp.start()
    try:
        port = scp.settings.port
        served = echo_over_tls(port, pki, "modality")
        refused = not echo_over_tls(port, pki, "stranger") and not echo_over_tls(port, pki, None)
    finally:
        scp.stop()
    return Check("R16 DICOM TLS: CA-signed peer / untrusted or no certificate",
                 f"served {served} / refused {refused}", "True / True", served and refused)


def run_drills() -> Iterator[str]:
    """R8, R9 and PostgreSQL restarts under load, each on a stack of its own."""
    import httpx
    from pydicom.uid import ExplicitVRLittleEndian

    from radreport.bench.drills import (
        DrillResult,
        PostgresCluster,
        postgres_drill,
        redis_drill,
        triton_drill,
    )
    from radreport.data.phantoms import generate_study
    from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
    from radreport.stack import LocalStack, StackConfig
    from services.common.store import Store

    results: list[DrillResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = write_study_dicom(generate_study(11, 512), root / "study", DicomOptions(
            "DX", "MONOCHROME1", 12, str(ExplicitVRLittleEndian)))
        config = StackConfig.on_free_ports(root / "stack")
        with LocalStack(config) as stack, httpx.Client(
                base_url=config.gateway_url, timeout=120,
                headers={"Authorization": f"Bearer {config.token('service', 'chaos')}"}) as api:
            store = Store(f"sqlite:///{config.data_dir / 'radreport.db'}")
            results.append(redis_drill(stack, api, store, study))
            results.append(triton_drill(stack, api, store, study))
        cluster = PostgresCluster.create()
        cluster.start()
        try:
            config = StackConfig.on_free_ports(root / "pg-stack")
            config.extra_env = {"RADREPORT_DATABASE_URL": cluster.url}
            with LocalStack(config) as stack, httpx.Client(
                    base_url=config.gateway_url, timeout=120, headers={
                        "Authorization": f"Bearer {config.token('service', 'chaos')}"}) as api:
                results.append(postgres_drill(stack, api, cluster, study))
        finally:
            cluster.remove()
    yield (f"{'restart drill':<34}  {'accepted':>8}  {'unfinished at fault':>19}  "
           f"{'503 / rows while down':>21}  {'recovered':>9}  {'once / twice / lost':>19}  "
           f"{'ready':>5}  held")
    for r in results:
        down = f"{r.refused_while_down} / {r.created_while_down}"
        if r.name.startswith("R9"):
            down = f"waiting {r.waiting_while_down}"
        ends = f"{r.completed_once} / {r.completed_twice} / {r.unfinished}"
        yield (f"{r.name:<34}  {r.accepted:>8}  {r.unfinished_at_fault:>19}  {down:>21}  "
               f"{r.recovered_s:>7.0f} s  {ends:>19}  {r.ready_again!s:>5}  "
               f"{'yes' if r.held else 'NO'}" + (f"  ({'; '.join(r.notes)})" if r.notes else ""))
    redis_result = results[0]
    yield (f"R8 also: a DICOM push during the outage answered success and was reported once "
           f"Redis was back: {redis_result.dicom_push_accepted}; re-driven by the re-driver: "
           f"{redis_result.redriven}; dead letters: {redis_result.dead_letters}")


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
