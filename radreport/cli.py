"""The ``radreport`` command.

Subcommands arrive with the issues that build them; each imports its heavy modules lazily so
``radreport --help`` stays instant and runtime images never load torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="radreport: grounded chest X-ray report drafting (not for clinical use).")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print figures.")
app.add_typer(bench_app, name="bench")


@app.command()
def phantoms(
    out: Annotated[Path, typer.Option(help="Export folder (manifest, images, masks, DICOM).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of studies.")] = 100,
    size: Annotated[int, typer.Option(min=256, max=2048, help="Image size in pixels.")] = 512,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the first study.")] = 0,
    split: Annotated[str | None, typer.Option(help="Split name written in the manifest.")] = None,
    dicom: Annotated[bool, typer.Option(help="Also write DICOM (CR/DX, mixed syntaxes).")] = False,
    benchmark: Annotated[bool, typer.Option(
        help="Generate the fixed benchmark split (train/validate/test) instead; ignores "
             "--n/--seed/--size/--split.")] = False,
    only: Annotated[list[str] | None, typer.Option(
        help="With --benchmark, only these splits (repeatable).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = os.cpu_count() or 1,
) -> None:
    """Generate synthetic chest X-ray phantoms with true findings, regions and reports."""
    from radreport.data.benchmark import BENCHMARK_SIZE_PX, BENCHMARK_SPLITS
    from radreport.data.phantoms.export import export_studies

    if not benchmark:
        written = export_studies(range(seed, seed + n), size, out, split=split, dicom=dicom,
                                 workers=workers, progress=True)
        typer.echo(f"wrote {written} studies to {out}")
        return
    first = True
    for spec in BENCHMARK_SPLITS:
        if only and spec.name not in only:
            continue
        written = export_studies(spec.seeds, BENCHMARK_SIZE_PX, out, split=spec.name,
                                 dicom=dicom, workers=workers, append=not first, progress=True)
        first = False
        typer.echo(f"{spec.name}: wrote {written} studies (seeds {spec.seeds.start}.."
                   f"{spec.seeds.stop - 1}, {BENCHMARK_SIZE_PX} px) to {out}")


@app.command("contact-sheet")
def contact_sheet(
    export_dir: Annotated[Path, typer.Argument(help="A folder written by 'radreport phantoms'.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("contact_sheet.png"),
    count: Annotated[int, typer.Option(min=1, help="Studies to show.")] = 12,
    columns: Annotated[int, typer.Option(min=1)] = 2,
) -> None:
    """Draw a PNG grid of studies with their boxes and reports, to judge them at a glance."""
    from radreport.data.contact_sheet import write_contact_sheet

    path = write_contact_sheet(export_dir, out, count=count, columns=columns)
    typer.echo(f"wrote {path}")


DEFAULT_TRAIN_CONFIG = Path(__file__).parent / "model" / "configs" / "default.toml"


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Run folder: tokenizer, checkpoints, metrics.csv.")],
    config: Annotated[Path, typer.Option(help="TOML training config.")] = DEFAULT_TRAIN_CONFIG,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    stop_after: Annotated[int | None, typer.Option(
        min=1, help="Stop after this many epochs in total (schedule unchanged).")] = None,
    override: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config value, e.g. --set train.epochs=2 (repeatable).")] = None,
) -> None:
    """Train the grounded report model (needs the 'train' extra: torch)."""
    from radreport.model.train import load_config
    from radreport.model.train import train as run_training

    try:
        resolved = load_config(config, override or [])
    except (ValueError, TypeError) as err:
        raise typer.BadParameter(str(err), param_hint="--set") from err
    best = run_training(resolved, out, resume=resume, stop_after=stop_after)
    typer.echo(f"best checkpoint: {best}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint written by 'radreport train'.")],
    out: Annotated[Path, typer.Option(help="Folder for encoder.onnx and decoder_step.onnx.")],
    int8: Annotated[bool, typer.Option(help="Also write INT8 (dynamic quantization).")] = False,
    fp16: Annotated[bool, typer.Option(help="Also write FP16 (float32 at the boundary).")] = False,
    opset: Annotated[int, typer.Option(min=17)] = 17,
) -> None:
    """Export a checkpoint to the two ONNX graphs Triton serves (needs torch)."""
    import torch

    from radreport.model.export import convert_fp16, export_onnx, quantize_int8
    from radreport.model.model import RadReportModel

    model = RadReportModel.from_checkpoint(torch.load(checkpoint, map_location="cpu",
                                                      weights_only=True)).eval()
    paths = list(export_onnx(model, out, opset=opset))
    for wanted, suffix, convert in ((int8, "int8", quantize_int8), (fp16, "fp16", convert_fp16)):
        if wanted:
            paths += [convert(p, p.with_name(f"{p.stem}.{suffix}.onnx")) for p in paths[:2]]
    for path in paths:
        typer.echo(f"wrote {path}")


@bench_app.command("phantoms")
def bench_phantoms(
    count: Annotated[int, typer.Option(min=1)] = 1000,
    size: Annotated[int, typer.Option(min=256, max=2048)] = 512,
) -> None:
    """Time phantom generation on one core (goal: 1,000 at 512 px in under a minute)."""
    from radreport.bench.phantoms import report, run

    typer.echo(report(run(count, size)))


def main(argv: list[str] | None = None) -> None:
    app(args=argv)


if __name__ == "__main__":
    main()
