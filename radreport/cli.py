"""The ``radreport`` command.

Subcommands arrive with the issues that build them; each imports its heavy modules lazily so
``radreport --help`` stays instant and runtime images never load torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from radreport.audit_cli import audit_app
from radreport.bench_cli import bench_app

if TYPE_CHECKING:
    import numpy as np

    from radreport.stack import StackConfig

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="radreport: grounded chest X-ray report drafting (not for clinical use).")
app.add_typer(bench_app, name="bench")
app.add_typer(audit_app, name="audit")


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


DEFAULT_TRAIN_CONFIG = Path(__file__).parent / "model" / "configs" / "v2.toml"


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
    out: Annotated[Path, typer.Option(help="Model folder to write: ONNX graphs, tokenizer, "
                                      "model.json.")],
    tokenizer: Annotated[Path | None, typer.Option(
        help="tokenizer.json of the run; default: the one beside the checkpoint.")] = None,
    name: Annotated[str, typer.Option(help="Model name recorded in model.json.")
                    ] = "radreport-phantom",
    version: Annotated[str, typer.Option(help="Model version recorded in model.json.")
                       ] = "0.0.0-dev",
    int8: Annotated[bool, typer.Option(help="Also write INT8 (dynamic quantization).")] = False,
    fp16: Annotated[bool, typer.Option(help="Also write FP16 (float32 at the boundary).")] = False,
    opset: Annotated[int, typer.Option(min=17)] = 17,
    fit: Annotated[bool, typer.Option(
        help="Refit the safety net (v2) and drift reference on the run's own data; "
        "--no-fit skips it (the model card says so).")] = True,
    fit_validate: Annotated[int, typer.Option(min=2, help="Validate-split studies fitted on.")
                            ] = 1000,
    fit_train: Annotated[int, typer.Option(min=2, help="Train-split studies for the OOD fit.")
                         ] = 2000,
    reference_studies: Annotated[int, typer.Option(
        min=1, help="Train-split studies in the drift reference.")] = 64,
    data_root: Annotated[Path | None, typer.Option(
        help="The run's real dataset folder, if it moved since training.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes rendering phantoms.")
                       ] = os.cpu_count() or 1,
) -> None:
    """Export a checkpoint to a self-consistent model folder: the ONNX graphs Triton serves,
    the safety net and drift reference refitted on the run's data, MODEL_CARD.md."""
    from radreport.model.package import DatasetMissing, FitOptions, export_model

    tokenizer_path = tokenizer or checkpoint.parent / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise typer.BadParameter(f"{tokenizer_path} not found", param_hint="--tokenizer")
    variants = [v for v, wanted in (("int8", int8), ("fp16", fp16)) if wanted]
    options = FitOptions(fit_validate, fit_train, reference_studies, workers=workers,
                         root=data_root) if fit else None
    try:
        result = export_model(checkpoint, tokenizer_path, out, name, version, opset, variants,
                              options)
    except DatasetMissing as err:
        raise typer.BadParameter(str(err), param_hint="--data-root") from err
    for path in result.paths:
        typer.echo(f"wrote {path}")
    for record in result.fitted:
        typer.echo(f"{record.what}: {record.how}")
    from radreport.model.tracking import log_model_folder

    run = log_model_folder(checkpoint, out)
    if run is not None:
        typer.echo(f"attached {out} to MLflow run {run.run_id}")


@app.command()
def draft(
    image: Annotated[Path, typer.Argument(help="A grayscale PNG (8- or 16-bit), e.g. a phantom.")],
    model: Annotated[Path | None, typer.Option(
        help="Model folder; default: the shipped model.")] = None,
    indication: Annotated[str | None, typer.Option(help="Clinical indication (optional).")
                          ] = None,
    age: Annotated[int | None, typer.Option(min=0, max=130, help="Patient age in years.")
                   ] = None,
    sex: Annotated[str | None, typer.Option(help="Patient sex: F, M, O or U.")] = None,
) -> None:
    """Draft a grounded report for one image with the model alone (no services, no torch)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from radreport.model.prompt import ClinicalContext
    from radreport.model.report import DEFAULT_MODEL_DIR, ReportGenerator

    try:
        with Image.open(image) as img:
            pixels = np.asarray(img)
    except (OSError, UnidentifiedImageError) as err:
        raise typer.BadParameter(f"cannot read {image}: {err}", param_hint="IMAGE") from err
    if pixels.ndim != 2 or pixels.dtype.kind not in "ui":
        raise typer.BadParameter(f"{image} is not a grayscale 8- or 16-bit image",
                                 param_hint="IMAGE")
    scaled = pixels.astype(np.float32) / (255.0 if pixels.dtype == np.uint8 else 65535.0)
    context = ClinicalContext(indication, age, sex)
    report = ReportGenerator(model or DEFAULT_MODEL_DIR).generate([scaled],
                                                                  contexts=[context])[0]
    typer.echo(f"model {report.model_version} (not for clinical use)")
    typer.echo(report.text)
    for sentence in report.sentences:
        typer.echo(f"  [{sentence.section}] {sentence.text} -> boxes {sentence.boxes}")
    safety = report.safety
    if safety is not None:
        typer.echo(f"findings the head decided present: {', '.join(safety.findings_present)}")
        typer.echo(f"calibrated confidence {safety.calibrated_confidence:.3f}; uncertain: "
                   f"{', '.join(safety.uncertain_findings) or 'none'}")
        if safety.ood_score is not None:
            typer.echo(f"OOD score {safety.ood_score:.2f} (threshold {safety.ood_threshold:.2f})"
                       + (": OUTSIDE the training distribution, review required"
                          if safety.out_of_distribution else ""))


@app.command()
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


MLFLOW_RUN_HELP = ("Attach the JSON to this MLflow run: a run or model folder holding "
                   "mlflow_run.json, or a run id on $MLFLOW_TRACKING_URI. Default: the run "
                   "recorded in the model folder, if any.")


def _attach(run: str | None, model_dir: Path, paths: list[Path], artifact_path: str) -> None:
    from radreport.model.tracking import attach_reports

    try:
        ref = attach_reports(run, model_dir, paths, artifact_path)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--mlflow-run") from err
    if ref is not None:
        typer.echo(f"attached {', '.join(map(str, paths))} to MLflow run {ref.run_id}")


@app.command()
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


@app.command("fit-safety")
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
                         variant=variant)
    else:
        from radreport.model.fit_safety_data import fit_safety_on_dataset

        if root is None or not root.is_dir():
            raise typer.BadParameter(f"--root must be the {dataset} folder", param_hint="--root")
        fitted = fit_safety_on_dataset(model, dataset, root, validate, train,
                                       critical_sensitivity, max_review_rate=max_review_rate,
                                       ood_flag_rate=ood_flag_rate, variant=variant)
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


@app.command("fit-grounding")
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


@app.command("triton-repo")
def triton_repo(
    target: Annotated[str, typer.Option(help="cpu (model_repository/) or gpu "
                                        "(deploy/triton/gpu/, TensorRT).")] = "cpu",
    out: Annotated[Path | None, typer.Option(
        help="Also lay the target's repository out in this (empty) folder.")] = None,
    model: Annotated[Path | None, typer.Option(
        help="Model folder whose ONNX graphs the engines are built from.")] = None,
) -> None:
    """Check a target's Triton configs offline (protobuf schema, ONNX I/O); lay it out."""
    from radreport.model.report import DEFAULT_MODEL_DIR
    from radreport.serving.repository import TARGETS, check_target, layout

    if target not in TARGETS:
        raise typer.BadParameter(f"unknown target {target!r}; choose cpu or gpu",
                                 param_hint="--target")
    problems = check_target(target, model or DEFAULT_MODEL_DIR)
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{target}: every config in {TARGETS[target]} checks clean")
    if out is not None:
        for config in layout(target, out):
            typer.echo(f"wrote {config}")
        if target == "gpu":
            typer.echo(f"next, on the GPU: bash deploy/triton/build_trt_engines.sh {out}")


@app.command()
def calibrate(
    out: Annotated[Path, typer.Option(help="Folder for the tables, one subfolder per graph.")],
    count: Annotated[int, typer.Option(min=1, help="Training-split phantoms to run.")] = 32,
    model: Annotated[Path | None, typer.Option(help="Model folder (default: shipped).")] = None,
) -> None:
    """INT8 calibration tables for the GPU target's TensorRT engines, from phantoms."""
    from radreport.model.report import DEFAULT_MODEL_DIR
    from radreport.serving.calibrate import calibrate as run_calibration

    for graph, folder in run_calibration(model or DEFAULT_MODEL_DIR, out, count).items():
        typer.echo(f"{graph}: {folder}/calibration.cache (trtexec), "
                   f"{folder}/calibration.flatbuffers (ONNX Runtime TensorRT provider)")


@app.command()
def eda(
    root: Annotated[Path, typer.Argument(help="The dataset's folder.")],
    out: Annotated[Path, typer.Option(help="Folder for eda.json, eda.md and the plots.")],
    dataset: Annotated[str, typer.Option(
        help="phantoms | mimic-cxr-jpg | iu-xray | chexpert | auto")] = "auto",
    split: Annotated[str | None, typer.Option(help="One split only; default all.")] = None,
    all_views: Annotated[bool, typer.Option(help="Lateral views too.")] = False,
) -> None:
    """Exploratory statistics of a dataset: lengths, terms, findings, with plots."""
    from radreport.data.datasets.base import detect_dataset, open_dataset
    from radreport.eval.eda import describe, write

    kind = detect_dataset(root) if dataset == "auto" else dataset
    summary = describe(kind, open_dataset(kind, root).records(split, frontal_only=not all_views))
    for path in write(summary, out):
        typer.echo(path)
    typer.echo(f"{summary.records} records, {summary.patients} patients, "
               f"{summary.with_text} with text, {summary.with_labels} with labels")


@app.command()
def token(
    role: Annotated[str, typer.Option(help="radiologist | service | admin")] = "radiologist",
    subject: Annotated[str | None, typer.Option(help="Who the token names.")] = None,
    ttl: Annotated[int, typer.Option(min=1, max=86400, help="Lifetime in seconds.")] = 900,
) -> None:
    """Print a short-lived bearer token for the local stack (its own signing key)."""
    from radreport.stack import StackConfig
    from services.common.auth import Role

    if role not in {r.value for r in Role}:
        raise typer.BadParameter(f"unknown role {role!r}", param_hint="--role")
    typer.echo(StackConfig.from_env().token(role, subject or f"local-{role}", ttl))


@app.command("api-key")
def api_key(
    subject: Annotated[str, typer.Option(help="The machine, e.g. ris-bridge.")],
) -> None:
    """Create an API key (role service) for a machine client; shown once, stored hashed."""
    from radreport.stack import StackConfig
    from services.common.auth import AuthSettings, Role, create_api_key

    typer.echo(create_api_key(subject, Role.service,
                              AuthSettings(key_dir=StackConfig.from_env().key_dir)))


@app.command()
def up(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 180.0,
) -> None:
    """Start the local stack in the background: Redis, Triton, workers, gateway, under a
    supervisor that restarts any of them that dies."""
    from radreport.stack import StackConfig, StackError, start_supervised

    try:
        stack = start_supervised(StackConfig.from_env(), timeout)
    except StackError as err:
        typer.echo(f"radreport up: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(f"radreport is up: gateway {stack.config.gateway_url} "
               f"(API docs {stack.config.gateway_url}/docs, gRPC {stack.config.grpc_target}), "
               f"logs in {stack.logs}")
    typer.echo("stop it with: radreport down")


@app.command()
def down() -> None:
    """Stop the local stack that `radreport up` started."""
    from radreport.stack import LocalStack, StackConfig

    stack = LocalStack(StackConfig.from_env())
    if not stack.pids():
        typer.echo("radreport: no local stack is running")
        return
    stack.down()
    typer.echo("radreport: stopped")


def _client_token(config: StackConfig) -> str:
    """$RADREPORT_TOKEN, or a machine token signed with the local stack's key."""
    return os.environ.get("RADREPORT_TOKEN") or config.token("service", "radreport-cli")


def _study_id_of(image: Path) -> str:
    return image.stem.replace(" ", "_")[:64]


@app.command()
def report(
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                          help="A DICOM, PNG or JPEG chest radiograph.")],
    study_id: Annotated[str | None, typer.Option(help="Default: the file's name.")] = None,
    gateway: Annotated[str | None, typer.Option(help="Default: the local stack's.")] = None,
    force: Annotated[bool, typer.Option(help="Generate again if a report exists.")] = False,
    save: Annotated[Path | None, typer.Option(
        help="Also save the report JSON, its FHIR bundle and overlays in this folder.")] = None,
) -> None:
    """Send one study to the gateway and print its grounded report."""
    import httpx

    from radreport.stack import StackConfig

    config = StackConfig.from_env()
    base = gateway or config.gateway_url
    headers = {"Authorization": f"Bearer {_client_token(config)}"}
    study = study_id or _study_id_of(image)
    with image.open("rb") as handle:
        response = httpx.post(f"{base}/api/v1/reports/generate", timeout=120, headers=headers,
                              files={"file": (image.name, handle)},
                              data={"study_id": study, "force": str(force).lower()})
    body = response.json()
    if response.status_code not in (200, 202):
        typer.echo(f"HTTP {response.status_code}: {body.get('detail')}", err=True)
        raise typer.Exit(1)
    typer.echo(f"report {body['report_id']} ({body['status']}, model {body['model_version']})")
    if body["status"] != "completed":
        typer.echo(f"not finished yet; poll {base}/api/v1/reports/{body['report_id']}")
        return
    typer.echo(f"FINDINGS: {body['findings']}\nIMPRESSION: {body['impression']}")
    for sentence in body["sentences"]:
        typer.echo(f"  [{sentence['index']}] {sentence['text']} -> boxes {sentence['boxes']}")
    for finding in body["findings_structured"]:
        typer.echo(f"  finding {finding['finding']}: present={finding['present']} "
                   f"confidence={finding['confidence']:.2f} critical={finding['is_critical']}")
    typer.echo(f"confidence {body['confidence']}, radiologist review required: "
               f"{body['requires_radiologist_review']} {body['review_reasons']}")
    typer.echo(f"processing time {body['processing_time_ms']} ms")
    typer.echo(f"FHIR:      {base}{body['fhir_url']}")
    typer.echo(f"grounding: {base}{body['grounding_map_url']}")
    for sentence in body["sentences"]:
        typer.echo(f"overlay:   {base}{sentence['overlay_url']}")
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        (save / "report.json").write_text(response.text)
        for name, url in (("fhir.json", body["fhir_url"]),
                          ("grounding.json", body["grounding_map_url"]),
                          *((f"overlay-{s['index']:02d}.png", s["overlay_url"])
                            for s in body["sentences"])):
            (save / name).write_bytes(httpx.get(f"{base}{url}", timeout=30,
                                                headers=headers).content)
        typer.echo(f"saved the report, FHIR bundle, maps and overlays in {save}")


@app.command()
def stream(
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                          help="A DICOM, PNG or JPEG chest radiograph.")],
    study_id: Annotated[str | None, typer.Option(help="Default: the file's name.")] = None,
    target: Annotated[str | None, typer.Option(
        help="host:port of the gRPC API. Default: the local stack's.")] = None,
    force: Annotated[bool, typer.Option(help="Generate again if a report exists.")] = False,
) -> None:
    """Stream one study's report over gRPC: each sentence and its region as it is decoded."""
    import time

    import grpc

    from radreport.stack import StackConfig
    from radreport.v1 import report_service_pb2 as service_pb
    from radreport.v1 import report_service_pb2_grpc as service_grpc

    config = StackConfig.from_env()
    token = _client_token(config)
    request = service_pb.GenerateRequest(study_id=study_id or _study_id_of(image),
                                         image_data=image.read_bytes(), force=force)
    start = time.perf_counter()
    with grpc.insecure_channel(target or config.grpc_target) as channel:
        calls = service_grpc.ReportServiceStub(channel)
        try:
            for event in calls.GenerateStream(request, timeout=300, metadata=(
                    ("authorization", f"Bearer {token}"),)):
                at = f"{1000 * (time.perf_counter() - start):6.0f} ms"
                if event.HasField("status"):
                    stage = service_pb.StatusUpdate.Stage.Name(event.status.stage)
                    typer.echo(f"{at}  {event.report_id} {stage.removeprefix('STAGE_').lower()}"
                               + (" (existing report)" if event.status.existing_report else ""))
                elif event.HasField("sentence"):
                    s = event.sentence
                    boxes = [(b.x0, b.y0, b.x1, b.y1) for b in s.boxes]
                    typer.echo(f"{at}  [{s.index}] {s.text} -> boxes {boxes}")
                else:
                    report = event.report
                    typer.echo(f"{at}  report {report.report_id} "
                               f"{pb_status_name(report.status)}: {len(report.sentences)} "
                               f"sentences, review required: "
                               f"{report.requires_radiologist_review}")
        except grpc.RpcError as err:
            typer.echo(f"gRPC {err.code().name}: {err.details()}", err=True)
            raise typer.Exit(1) from err


def pb_status_name(status: int) -> str:
    from radreport.v1 import report_pb2

    return report_pb2.ReportStatus.Name(status).removeprefix("REPORT_STATUS_").lower()


def main(argv: list[str] | None = None) -> None:
    app(args=argv)


if __name__ == "__main__":
    main()
