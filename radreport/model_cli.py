"""The model commands of ``radreport``: evaluate, gate, fit-safety, fit-grounding.

They sit on the top-level app (``radreport evaluate``, not a sub-group), so ``register`` adds
them to it; heavy imports stay inside the commands so ``radreport --help`` stays instant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

if TYPE_CHECKING:
    import numpy as np

MLFLOW_RUN_HELP = ("Attach the JSON to this MLflow run: a run or model folder holding "
                   "mlflow_run.json, or a run id on $MLFLOW_TRACKING_URI. Default: the run "
                   "recorded in the model folder, if any.")


def evaluate(
    model: Annotated[Path | None, typer.Option(
        help="Model folder (ONNX graphs, tokenizer, model.json); default: the shipped model.")
    ] = None,
    ablation: Annotated[Path | None, typer.Option(
        help="Baseline (b): the same model trained without grounding and entropy losses.")
    ] = None,
    variant: Annotated[list[str] | None, typer.Option(
        help="Also evaluate these precision variants of --model: int8, fp16 (repeatable).")
    ] = None,
    split: Annotated[str, typer.Option(help="Benchmark split.")] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N studies.")] = None,
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples.")] = 1000,
    workers: Annotated[int, typer.Option(min=1, help="Processes rendering studies.")
                       ] = os.cpu_count() or 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write results here.")
                        ] = None,
    v1: Annotated[Path | None, typer.Option(
        help="Baseline (c): a v1 model folder (e.g. the one shipped before v2).")] = None,
    with_context: Annotated[bool, typer.Option(
        help="Also run the model given each study's indication, age and sex.")] = True,
    ood: Annotated[bool, typer.Option(
        help="Also score the OOD gate on transformed test images (per transform AUROC).")
    ] = False,
    ood_limit: Annotated[int, typer.Option(min=2, help="Test images per OOD transform.")
                         ] = 200,
    mlflow_run: Annotated[str | None, typer.Option(help=MLFLOW_RUN_HELP)] = None,
) -> None:
    """Score the model and the baselines on the benchmark split; print one table (95% CIs)."""
    from radreport.eval.evaluate import (
        SystemRun,
        reads_context,
        render_cases,
        run_model,
        score,
        split_seeds,
        template_system,
    )
    from radreport.eval.metrics import format_table
    from radreport.eval.safety_metrics import mean_anatomy_masks
    from radreport.model.report import DEFAULT_MODEL_DIR, VARIANTS, Variant

    model_dir = model or DEFAULT_MODEL_DIR
    variants = variant or []
    unknown = [v for v in variants if v not in VARIANTS[1:]]
    if unknown:
        raise typer.BadParameter(f"unknown variant(s) {unknown}; choose int8 or fp16",
                                 param_hint="--variant")
    try:
        seeds = split_seeds(split, limit)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--split") from err
    typer.echo(f"rendering {len(seeds)} {split} studies ...", err=True)
    cases = render_cases(seeds, workers)
    main_run = run_model("grounded model (ours)", model_dir, cases)
    runs: list[SystemRun] = [main_run]
    if with_context and reads_context(model_dir):
        runs.append(run_model("ours, with indication/age/sex", model_dir, cases,
                              with_context=True))
    runs += [run_model(f"ours, {v}", model_dir, cases, cast(Variant, v)) for v in variants]
    if ablation is not None:
        runs.append(run_model("(b) no grounding/entropy loss", ablation, cases))
    if v1 is not None:
        runs.append(run_model("(c) v1", v1, cases))
    runs.append(template_system(main_run))
    typer.echo("rendering training studies for the mean-mask baseline ...", err=True)
    baseline = mean_anatomy_masks(render_cases(split_seeds("train", 200), workers))
    result = score(runs, cases, resamples, baseline=baseline)
    typer.echo(format_table(result.rows))
    typer.echo(f"\n{result.studies} studies of the {split} split; point estimate "
               f"[95% bootstrap interval, {resamples} resamples].")
    for name, count in result.grounded_sentences.items():
        ms = 1000 * result.seconds[name] / result.studies
        typer.echo(f"{name}: {count} grounded sentences scored; {ms:.1f} ms/report "
                   "(greedy, batch 32)")
    if json_out is not None:
        import json

        payload = {"split": split, "studies": result.studies, "resamples": resamples,
                   "rows": result.rows, "grounded_sentences": result.grounded_sentences,
                   "seconds": result.seconds}
        json_out.write_text(json.dumps(payload, indent=1))
        _attach(mlflow_run, model_dir, [json_out], "evaluation")
    if ood:
        _evaluate_ood(model_dir, [c.image for c in cases[:ood_limit]])


def _attach(run: str | None, model_dir: Path, paths: list[Path], artifact_path: str) -> None:
    from radreport.model.tracking import attach_reports

    try:
        ref = attach_reports(run, model_dir, paths, artifact_path)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--mlflow-run") from err
    if ref is not None:
        typer.echo(f"attached {', '.join(map(str, paths))} to MLflow run {ref.run_id}")


def gate(
    model_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                              help="The candidate model folder.")],
    thresholds: Annotated[Path, typer.Option(exists=True, dir_okay=False, help=(
        "Thresholds TOML; the phantom benchmark's: radreport/eval/thresholds/phantom-v2.toml"))],
    dataset: Annotated[str, typer.Option(help="phantoms | mimic-cxr-jpg | iu-xray | chexpert")
                       ] = "phantoms",
    root: Annotated[Path | None, typer.Option(help="A real dataset's folder.")] = None,
    ms_cxr: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help=(
        "mimic-cxr-jpg: MS-CXR's MS_CXR_Local_Alignment_v1.1.0.csv; its boxes score "
        "grounding IoU and pointing on the images they are drawn on."))] = None,
    split: Annotated[str, typer.Option(help="Held-out split.")] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N studies.")] = None,
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples.")] = 1000,
    ood_limit: Annotated[int, typer.Option(min=2, help="Test images per OOD transform.")
                         ] = 200,
    workers: Annotated[int, typer.Option(min=1, help="Processes rendering phantoms.")
                       ] = os.cpu_count() or 1,
    baseline_studies: Annotated[int, typer.Option(
        min=1, help="Train studies whose mean organ masks are the blind baseline.")] = 200,
    out: Annotated[Path, typer.Option(help="Folder for gate.json and gate.md.")] = Path("gate"),
    mlflow_run: Annotated[str | None, typer.Option(help=MLFLOW_RUN_HELP)] = None,
) -> None:
    """Release gate: evaluate a candidate on a held-out split and check every threshold;
    writes gate.json and gate.md, and exits 1 if any threshold is not met."""
    from radreport.eval.gate import load_cases, load_thresholds, run_gate, write_reports
    from radreport.model.report import MODEL_INFO_FILE, ModelInfo

    spec = load_thresholds(thresholds)
    size = ModelInfo.load(model_dir / MODEL_INFO_FILE).image_size  # MS-CXR masks' square
    try:
        cases, baseline, notes = load_cases(dataset, root, split, limit, workers,
                                            baseline_studies, ms_cxr, size)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--dataset/--root/--split/--ms-cxr"
                                 ) from err
    result = run_gate(model_dir, cases, spec, dataset=dataset, split=split,
                      resamples=resamples, ood_limit=ood_limit, baseline=baseline, notes=notes)
    paths = list(write_reports(result, out))
    typer.echo(paths[1].read_text())
    _attach(mlflow_run, model_dir, paths, "gate")
    if not result.passed:
        typer.echo(f"gate FAILED: {', '.join(result.failures)}", err=True)
        raise typer.Exit(1)


def _evaluate_ood(model_dir: Path, images: list[np.ndarray]) -> None:
    """Per committed transform: AUROC against the untransformed test images, flag rate."""
    from radreport.eval.ood import evaluate_transforms
    from radreport.model.report import ReportGenerator

    generator = ReportGenerator(model_dir)
    if generator.safety_net.ood is None:
        raise typer.BadParameter(f"{model_dir} has no OOD gate: run 'radreport fit-safety'",
                                 param_hint="--ood")
    inside, results = evaluate_transforms(generator, images)
    flagged = float((inside > generator.safety_net.ood.threshold).mean())
    typer.echo(f"\nOOD gate on {len(images)} test images: {flagged:.3f} of them flagged")
    typer.echo(f"{'transform':<20} {'kind':<5} {'AUROC':>7} {'flagged':>8}")
    for r in results:
        typer.echo(f"{r.name:<20} {r.kind:<5} {r.auroc:>7.3f} {r.flag_rate:>8.3f}")


def fit_safety_command(
    model: Annotated[Path, typer.Option(help="Model folder to calibrate (v2 export).")],
    validate: Annotated[int, typer.Option(min=50, help="Validate-split studies.")] = 1000,
    train: Annotated[int, typer.Option(min=50, help="Train-split studies for the OOD fit.")
                     ] = 2000,
    critical_sensitivity: Annotated[float, typer.Option(
        min=0.5, max=1.0, help="Validate sensitivity each critical label's threshold reaches "
        "(1.0: every validate positive, unless the 0.90 specificity floor forbids it).")
    ] = 1.0,
    max_review_rate: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Cap on validate studies with an uncertain critical finding.")
    ] = 0.15,
    pooled_sensitivity: Annotated[float | None, typer.Option(
        min=0.5, max=1.0, help="Then raise the critical thresholds jointly, for F1, while the "
        "pooled validate critical sensitivity stays at or above this.")] = None,
    ood_flag_rate: Annotated[float, typer.Option(
        min=0.0, max=0.5, help="Validate studies the OOD threshold flags.")] = 0.01,
    workers: Annotated[int, typer.Option(min=1, help="Processes rendering studies.")
                       ] = os.cpu_count() or 1,
    variant: Annotated[str, typer.Option(
        help="Precision variant whose outputs are calibrated (int8, fp16: writes "
        "calibration.<variant>.json).")] = "fp32",
    dataset: Annotated[str, typer.Option(
        help="phantoms, or the real dataset the model was trained on: mimic-cxr-jpg, "
        "iu-xray, chexpert (with --root).")] = "phantoms",
    root: Annotated[Path | None, typer.Option(help="The real dataset's folder.")] = None,
) -> None:
    """Calibrate a model folder on the validate split: temperatures, thresholds, uncertain
    bands and the OOD gate (writes calibration.json; never reads the test split)."""
    from radreport.model.fit_safety import fit_safety
    from radreport.model.report import VARIANTS

    if variant not in VARIANTS:
        raise typer.BadParameter(f"expected one of {VARIANTS}", param_hint="--variant")
    if dataset == "phantoms":
        fit = fit_safety(model, validate, train, workers, critical_sensitivity,
                         max_review_rate=max_review_rate, ood_flag_rate=ood_flag_rate,
                         variant=variant, pooled_sensitivity=pooled_sensitivity)
    else:
        from radreport.model.fit_safety_data import fit_safety_on_dataset

        if root is None or not root.is_dir():
            raise typer.BadParameter(f"--root must be the {dataset} folder", param_hint="--root")
        fitted = fit_safety_on_dataset(model, dataset, root, validate, train,
                                       critical_sensitivity, max_review_rate=max_review_rate,
                                       ood_flag_rate=ood_flag_rate, variant=variant,
                                       pooled_sensitivity=pooled_sensitivity)
        fit = fitted.fit
        typer.echo(f"{dataset}: {len(fit.validate.labels)} validate studies, "
                   f"{fitted.unreadable} unreadable images skipped")
    calibration = fit.net.calibration
    assert calibration is not None
    for name, label in zip(calibration.labels, calibration.per_label, strict=True):
        band = "" if label.band is None else f" band [{label.band[0]:.3f}, {label.band[1]:.3f})"
        typer.echo(f"{name:<27} T {label.temperature:6.3f} threshold {label.threshold:.3f}{band}")
    if fit.net.ood is not None:
        typer.echo(f"OOD threshold {fit.net.ood.threshold:.3f} (Mahalanobis distance)")
    typer.echo(f"wrote {fit.path}")


def fit_grounding_command(
    model: Annotated[Path, typer.Option(help="Model folder to tune (v2 export).")],
    validate: Annotated[int, typer.Option(min=20, help="Validate-split studies.")] = 500,
    min_sentences: Annotated[int, typer.Option(
        min=1, help="Validate sentences a kind needs for a tuning of its own.")] = 20,
    workers: Annotated[int, typer.Option(min=1, help="Processes rendering studies.")
                       ] = os.cpu_count() or 1,
) -> None:
    """Fit how each kind of sentence blends its map with the queries' maps, on the
    validate split (writes grounding.json; never reads the test split)."""
    from radreport.model.fit_grounding import fit_grounding

    fit = fit_grounding(model, validate, workers, min_sentences)
    for kind, tuning in sorted(fit.grounder.tunings.items()):
        typer.echo(f"{kind:<36} query weight {tuning.query_weight:4.2f} gamma "
                   f"{tuning.gamma:4.2f} ({fit.sentences.get(kind, '-')} sentences)")
    for label, side in fit.sides.items():
        typer.echo(f"side of {label:<27} read from its query map, cutoff {side.cutoff:.2f}: "
                   f"validate accuracy {side.read_accuracy:.3f} "
                   f"(text {side.text_accuracy:.3f})")
    typer.echo(f"wrote {fit.path}")


def register(app: typer.Typer) -> None:
    """Add the commands to ``app`` in the order its help lists them."""
    app.command()(evaluate)
    app.command()(gate)
    app.command("fit-safety")(fit_safety_command)
    app.command("fit-grounding")(fit_grounding_command)
