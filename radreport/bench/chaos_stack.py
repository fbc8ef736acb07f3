"""``radreport bench chaos``, its whole-stack part (issue 16): ``run_hostile`` checks bodies
(R12), SSRF, the review transactions, patient data in logs, metrics and Redis (R14), DICOM
TLS (R16) and decoder bombs (R5); ``run_drills`` kills Redis (R8), Triton (R9) and
PostgreSQL under load, on stacks with the default re-driver settings, and prints what came
back. Each prints a table."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
from pydicom.uid import ExplicitVRLittleEndian

from radreport.bench.hostile_api import Check
from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
from radreport.stack import LocalStack, StackConfig


def _study(folder: Path, seed: int) -> Path:
    return write_study_dicom(generate_study(seed, 512), folder, DicomOptions(
        "DX", "MONOCHROME1", 12, str(ExplicitVRLittleEndian)))


def _client(config: StackConfig, role: str) -> httpx.Client:
    return httpx.Client(base_url=config.gateway_url, timeout=120, headers={
        "Authorization": f"Bearer {config.token(role, f'chaos-{role}')}"})


def run_hostile() -> Iterator[str]:
    """R12 bodies, SSRF, transactions and R14 PHI on one stack; R16 TLS on an SCP of its own."""
    from radreport.bench.hostile_api import body_checks, ssrf_checks, transaction_checks
    from radreport.bench.phi_scan import plant_and_scan

    checks: list[Check] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = _study(root / "study", 12)
        config = StackConfig.on_free_ports(root / "stack")
        with LocalStack(config) as stack, _client(config, "service") as api, _client(
                config, "radiologist") as reviewer:
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
    from radreport.bench.pki import echo_over_tls, hospital_pki, tls_scp

    folder.mkdir(parents=True)
    pki = hospital_pki(folder)
    scp = tls_scp(pki, folder)
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
    from radreport.bench.drills import (
        DrillResult,
        PostgresCluster,
        postgres_drill,
        redis_drill,
        triton_drill,
    )
    from services.common.store import Store

    results: list[DrillResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = _study(root / "study", 11)
        config = StackConfig.on_free_ports(root / "stack")
        with LocalStack(config) as stack, _client(config, "service") as api:
            store = Store(f"sqlite:///{config.data_dir / 'radreport.db'}")
            results.append(redis_drill(stack, api, store, study))
            results.append(triton_drill(stack, api, store, study))
        cluster = PostgresCluster.create()
        cluster.start()
        try:
            config = StackConfig.on_free_ports(root / "pg-stack")
            config.extra_env = {"RADREPORT_DATABASE_URL": cluster.url}
            with LocalStack(config) as stack, _client(config, "service") as api:
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
