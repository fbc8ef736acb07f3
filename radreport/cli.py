"""The ``radreport`` command.

Subcommands arrive with the issues that build them; each imports its heavy modules lazily so
``radreport --help`` stays instant and runtime images never load torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from radreport.audit_cli import audit_app
from radreport.bench_cli import bench_app
from radreport.model_cli import register as register_model_commands

if TYPE_CHECKING:
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


# evaluate, gate, fit-safety, fit-grounding live in radreport/model_cli.py; registered here so
# `radreport --help` keeps listing them in this place.
register_model_commands(app)


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
