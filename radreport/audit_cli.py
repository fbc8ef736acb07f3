"""``radreport audit``: fairness and error analysis of a model on the benchmark split.

Thin commands: the work is in ``radreport.eval.fairness_report`` and
``radreport.eval.errors_report``; heavy imports stay inside the commands.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from radreport.eval.audit import AuditData

audit_app = typer.Typer(no_args_is_help=True,
                        help="Fairness and error analysis on the benchmark split.")

ModelOption = Annotated[Path | None, typer.Option(
    help="Model folder; default: the shipped model.")]
SplitOption = Annotated[str, typer.Option(help="Benchmark split.")]
LimitOption = Annotated[int | None, typer.Option(min=1, help="Only the first N studies.")]
OutOption = Annotated[Path, typer.Option(help="Folder for the report and its plots.")]
WorkersOption = Annotated[int, typer.Option(min=1, help="Processes rendering studies.")]
CPUS = os.cpu_count() or 1


def _collect(model: Path | None, split: str, limit: int | None, workers: int) -> AuditData:
    from radreport.eval.audit import collect
    from radreport.model.report import DEFAULT_MODEL_DIR

    try:
        from radreport.eval.evaluate import split_seeds

        split_seeds(split)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--split") from err
    typer.echo(f"drafting the {split} split ...", err=True)
    return collect(model or DEFAULT_MODEL_DIR, split, limit, workers)


@audit_app.command()
def fairness(
    out: OutOption,
    model: ModelOption = None,
    split: SplitOption = "test",
    limit: LimitOption = None,
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples.")] = 1000,
    margin: Annotated[float, typer.Option(
        min=0.0, help="Flag gaps larger than this (metrics lie in [0, 1]).")] = 0.05,
    workers: WorkersOption = CPUS,
) -> None:
    """Metrics by sex and age group with 95% bootstrap intervals; gaps beyond --margin flagged."""
    from radreport.eval.fairness_report import audit_fairness

    result = audit_fairness(_collect(model, split, limit, workers), out, resamples, margin)
    significant = sum(g.significant for g in result.flagged)
    typer.echo(f"{result.studies} studies; {len(result.flagged)} gaps beyond {margin:g} "
               f"({significant} with a 95% interval excluding 0); wrote {out}/fairness.md")


@audit_app.command()
def errors(
    out: OutOption,
    model: ModelOption = None,
    split: SplitOption = "test",
    limit: LimitOption = None,
    examples: Annotated[int, typer.Option(min=1, help="Example overlays per kind.")] = 4,
    workers: WorkersOption = CPUS,
) -> None:
    """Seed 000 §3.7 error analysis: per-finding grounding, failure kinds, overlays (HTML)."""
    from radreport.eval.errors_report import audit_errors

    summary = audit_errors(_collect(model, split, limit, workers), out, examples)
    typer.echo(f"{summary.studies} studies: {summary.tp_sentences} TP, {summary.fp_sentences} "
               f"FP sentences, {summary.missed} missed findings; grounding IoU "
               f"{summary.grounding_iou:.3f}, pointing {summary.pointing:.3f}; "
               f"wrote {out}/errors.html")
