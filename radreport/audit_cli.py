"""``radreport audit``: fairness and error analysis of a model on a held-out split.

Thin commands: the work is in ``radreport.eval.fairness_report``,
``radreport.eval.dataset_audit`` (a real dataset's studies) and
``radreport.eval.errors_report``; heavy imports stay inside the commands.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from radreport.eval.audit import AuditData
    from radreport.eval.fairness import Demographics

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


def _collect_dataset(model: Path | None, dataset: str, root: Path | None, split: str,
                     limit: int | None, ms_cxr: Path | None, mimic_iv: Path | None,
                     ) -> tuple[AuditData, list[Demographics], list[str]]:
    from radreport.eval.dataset_audit import collect_dataset
    from radreport.model.report import DEFAULT_MODEL_DIR

    if root is None:
        raise typer.BadParameter(f"dataset {dataset!r} needs --root, the dataset's folder",
                                 param_hint="--root")
    typer.echo(f"drafting {dataset}'s {split} split ...", err=True)
    try:
        found = collect_dataset(model or DEFAULT_MODEL_DIR, dataset, root, split, limit,
                                ms_cxr, mimic_iv)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--dataset/--root/--split/--ms-cxr/"
                                 "--mimic-iv") from err
    return found.data, found.demographics, found.notes


@audit_app.command()
def fairness(
    out: OutOption,
    model: ModelOption = None,
    dataset: Annotated[str, typer.Option(
        help="phantoms | mimic-cxr-jpg | iu-xray | chexpert")] = "phantoms",
    root: Annotated[Path | None, typer.Option(help="A real dataset's folder.")] = None,
    mimic_iv: Annotated[Path | None, typer.Option(exists=True, file_okay=False, help=(
        "mimic-cxr-jpg: a MIMIC-IV folder with hosp/patients and hosp/admissions; gives "
        "sex, age and race/ethnicity (MIMIC-CXR-JPG has none)."))] = None,
    ms_cxr: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help=(
        "mimic-cxr-jpg: MS-CXR's CSV; its boxes make grounding measurable."))] = None,
    split: SplitOption = "test",
    limit: LimitOption = None,
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples.")] = 1000,
    margin: Annotated[float, typer.Option(
        min=0.0, help="Flag gaps larger than this (metrics lie in [0, 1]).")] = 0.05,
    workers: WorkersOption = CPUS,
) -> None:
    """Metrics by sex, age group and race/ethnicity (where the data has them) with 95%
    bootstrap intervals; gaps beyond --margin flagged."""
    from radreport.eval.fairness_report import audit_fairness

    if dataset == "phantoms":
        if mimic_iv is not None or ms_cxr is not None:
            raise typer.BadParameter("--mimic-iv and --ms-cxr are for mimic-cxr-jpg",
                                     param_hint="--dataset")
        result = audit_fairness(_collect(model, split, limit, workers), out, resamples, margin)
    else:
        data, people, notes = _collect_dataset(model, dataset, root, split, limit, ms_cxr,
                                               mimic_iv)
        result = audit_fairness(data, out, resamples, margin, people, notes, dataset)
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
