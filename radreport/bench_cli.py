"""``radreport bench``: benchmarks that print figures.

Thin commands: the work is in ``radreport.bench``; heavy imports stay inside the commands so
``radreport --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print figures.")


@bench_app.command("model")
def bench_model(
    model: Annotated[Path | None, typer.Option(
        help="Model folder; default: the shipped model.")] = None,
    repeats: Annotated[int, typer.Option(min=1)] = 20,
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime threads.")] = None,
) -> None:
    """Time one report end to end per precision variant (goal: well under 1 s on 2 cores)."""
    from radreport.bench.model import run
    from radreport.model.report import DEFAULT_MODEL_DIR

    for line in run(model or DEFAULT_MODEL_DIR, repeats=repeats,
                    threads=threads):
        typer.echo(line)


@bench_app.command("stack")
def bench_stack(
    count: Annotated[int, typer.Option(min=2, help="Studies sent one at a time.")] = 20,
    burst: Annotated[int, typer.Option(min=1, help="Studies posted at once.")] = 200,
    size: Annotated[int, typer.Option(min=256, max=4096)] = 1024,
) -> None:
    """The whole stack end to end: latency, stage times, a burst, DICOM decoding."""
    from radreport.bench.stack import run

    for line in run(count=count, burst=burst, size=size):
        typer.echo(line)


@bench_app.command("compose")
def bench_compose(
    state: Annotated[Path, typer.Option(help="Folder for the stack's secrets.")
                     ] = Path("var/containers/compose"),
    timeout: Annotated[float, typer.Option(min=60, help="Seconds allowed to become healthy.")
                       ] = 900,
    keep: Annotated[bool, typer.Option(help="Leave the stack running afterwards.")] = False,
) -> None:
    """docker-compose.yml under podman-compose: healthy, smoke test, restart, persistence."""
    from radreport.bench.compose import run

    for line in run(state, timeout, keep):
        typer.echo(line)


@bench_app.command("kube")
def bench_kube(
    timeout: Annotated[float, typer.Option(min=60, help="Seconds allowed to become ready.")
                       ] = 900,
    keep: Annotated[bool, typer.Option(help="Leave the pods running afterwards.")] = False,
) -> None:
    """The Helm chart (CPU values) played by podman: readiness, smoke test, persistence."""
    from radreport.bench.kube import run

    for line in run(timeout, keep):
        typer.echo(line)


@bench_app.command("chaos")
def bench_chaos(
    fuzz_cases: Annotated[int, typer.Option(min=1, help="Mutated DICOM instances (R3).")
                          ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the mutations and API cases.")] = 0,
    api_cases: Annotated[int, typer.Option(
        min=0, help="Schemathesis cases against the running stack's API (R10); 0: none.")
    ] = 10_000,
    drills: Annotated[bool, typer.Option(
        help="Redis, Triton and PostgreSQL killed under load and restarted (R8, R9).")] = True,
) -> None:
    """The DICOM service under fuzzing, bombs and an association flood, the API under
    schemathesis, bodies, SSRF, transactions, PHI and TLS, and restart drills: tables."""
    from radreport.bench.chaos import run, run_api
    from radreport.bench.chaos_stack import run_drills, run_hostile

    for line in run(fuzz_cases, seed):
        typer.echo(line)
    if api_cases:
        for line in run_api(api_cases, seed):
            typer.echo(line)
    for line in run_hostile():
        typer.echo(line)
    if drills:
        for line in run_drills():
            typer.echo(line)


@bench_app.command("load")
def bench_load(
    minutes: Annotated[float, typer.Option(min=0.1, help="How long to keep posting.")] = 10.0,
    factor: Annotated[float, typer.Option(min=0.1, help="Times the nominal rate (1 per 8 s).")
                      ] = 2.0,
) -> None:
    """A steady stream of studies: errors, exactly-once, queue depth and memory (R13)."""
    from radreport.bench.load import run

    for line in run(minutes, factor):
        typer.echo(line)


@bench_app.command("phantoms")
def bench_phantoms(
    count: Annotated[int, typer.Option(min=1)] = 1000,
    size: Annotated[int, typer.Option(min=256, max=2048)] = 512,
) -> None:
    """Time phantom generation on one core (goal: 1,000 at 512 px in under a minute)."""
    from radreport.bench.phantoms import report, run

    typer.echo(report(run(count, size)))


@bench_app.command("serving")
def bench_serving(
    count: Annotated[int, typer.Option(min=1, help="Phantom studies per path.")] = 32,
    checkpoint: Annotated[Path | None, typer.Option(
        help="PyTorch checkpoint of the shipped model, for paths (a) and (b).")] = None,
) -> None:
    """PyTorch vs ONNX Runtime vs a real Triton (1-16 clients, batching on/off), side by side."""
    from radreport.bench.serving import run

    for line in run(count, checkpoint):
        typer.echo(line)


@bench_app.command("advisories")
def bench_advisories(
    lock: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Lock file to audit.")
                    ] = Path("deploy/requirements/runtime.txt"),
) -> None:
    """Known vulnerabilities of a lock's pins from PyPI's project JSON (where pip-audit cannot
    reach its services); pins below the newest release are listed as not audited."""
    from radreport.bench.advisories import audit_pins, read_pins, summary

    for line in summary(audit_pins(read_pins(lock))):
        typer.echo(line)
