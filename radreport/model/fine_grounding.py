"""Train the fine grounding head (``fine_head.py``) on a frozen v2 model, from phantoms.

The head is trained with the query loss the model uses (``region_kl``) on the phantoms'
query masks area-downsampled to the fine grid, and each device row on its own kind of
device's region; every other weight is frozen (the shipped model is read back from its
ONNX graphs, in eval mode, exactly the graphs' function). ``attach`` puts the trained head
into the model (``fine_head = true``) so that ``radreport export`` serves its maps.

``python -m radreport.model.fine_grounding train`` renders train-split studies once into a
memmap cache, trains with a checkpoint per epoch (it resumes), and writes the head's
weights; ``measure`` runs ``fine_grounding_eval`` on the validate split.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from torch import Tensor, nn

from radreport.data.benchmark import benchmark_split
from radreport.data.labels import CHEXPERT_LABELS, POSITIVE
from radreport.data.phantoms.generator import generate_study
from radreport.data.phantoms.study import PhantomStudy
from radreport.eval.labeler import DEVICE_KINDS
from radreport.model.cache import RecordSpec, _grid_u8, _query_masks
from radreport.model.chexquery import CheXQueryEncoder, region_kl
from radreport.model.data import area_downsample
from radreport.model.fine_head import (
    FINE_STRIDE,
    FineGroundingHead,
    FineInputs,
    HeadConfig,
    head_config,
)
from radreport.model.model import RadReportModel
from radreport.model.onnx_weights import recover_model

HEAD_FILE = "fine_head.pt"
HEAD_CONFIG_FILE = "fine_head.json"
# The phantoms' device kinds, as rows of ``DEVICE_KINDS``.
PHANTOM_DEVICES: dict[str, int] = {"ett": 0, "central_line": 1, "pacemaker": 2}
DEVICE_LR_RATIO = 10.0


def head_config_for(model: RadReportModel, devices: int = len(DEVICE_KINDS)) -> HeadConfig:
    return head_config(model.config, devices)


def frozen_inputs(encoder: CheXQueryEncoder, images: Tensor) -> FineInputs:
    """What the head reads, from the encoder's own forward pass (with its fine maps)."""
    fine = encoder(images, fine=True).fine
    assert fine is not None
    return fine


def attach(model: RadReportModel, head: FineGroundingHead) -> RadReportModel:
    """A copy of ``model`` with ``head`` as its fine head (``config.fine_head``)."""
    with_head = RadReportModel(replace(model.config, fine_head=True))
    state = {**model.state_dict(), **{f"fine_head.{k}": v for k, v in head.state_dict().items()}}
    with_head.load_state_dict(state)
    return with_head.eval()


def frozen_encoder(model: RadReportModel) -> CheXQueryEncoder:
    """The model's v2 encoder with no gradients, in eval mode (BatchNorm as exported)."""
    encoder = model.encoder
    if not isinstance(encoder, CheXQueryEncoder):
        raise ValueError("the fine head needs a v2 (chexquery) model")
    head_config_for(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return encoder


def query_weights(labels: Tensor, n_queries: int) -> Tensor:
    """(B, 14) labels -> (B, Q): a condition query is supervised when its finding is
    present, an anatomy query always (as ``cache.py`` weighs the query loss), a device row
    always (``region_kl`` skips the rows whose mask is empty: no such device)."""
    weight = labels.new_ones(labels.size(0), n_queries)
    weight[:, : labels.size(1)] = labels
    return weight


def fine_loss(maps: Tensor, masks: Tensor, weight: Tensor) -> Tensor:
    """The query loss at the fine grid: KL(mask || map) over supervised, non-empty rows."""
    return region_kl(maps, masks.flatten(2), weight)


# --- the train-split cache -------------------------------------------------------------------


@dataclass(frozen=True)
class CacheSpec:
    count: int
    image_size: int = 384
    study_size: int = 512
    n_queries: int = 20
    devices: int = len(DEVICE_KINDS)

    @property
    def rows(self) -> int:
        return self.n_queries + self.devices

    @property
    def grid(self) -> int:
        return self.image_size // FINE_STRIDE


def device_masks(study: PhantomStudy, grid: int, devices: int) -> np.ndarray:
    """(D, grid * grid) uint8: per device kind the union of the study's devices of that kind."""
    out = np.zeros((devices, grid * grid), np.uint8)
    for kind, row in PHANTOM_DEVICES.items():
        masks = [f.mask for f in study.findings if f.kind == kind]
        if masks and row < devices:
            out[row] = _grid_u8(np.logical_or.reduce(masks), grid)
    return out


def render_fine_record(seed: int, spec: CacheSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint16 (S, S), masks uint8 (Q + D, g, g), labels uint8 (14,)) of one study,
    rendered as training renders it (``cache.render_record``), masks at the fine grid."""
    study = generate_study(seed, spec.study_size)
    image = area_downsample(study.image, spec.image_size).numpy()
    record = RecordSpec(spec.image_size, spec.grid, 1, spec.n_queries)
    masks = np.concatenate([_query_masks(study, record),
                            device_masks(study, spec.grid, spec.devices)]).reshape(
        spec.rows, spec.grid, spec.grid)
    labels = np.array([study.labels[name] == POSITIVE for name in CHEXPERT_LABELS], np.uint8)
    return np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16), masks, labels


class FineCache:
    """Train studies 0..count-1 in memmaps under ``root``; ``build`` renders missing ones."""

    def __init__(self, root: Path, spec: CacheSpec) -> None:
        self.spec = spec
        self.dir = root / (f"train{spec.count}_{spec.image_size}_{spec.study_size}"
                           f"_d{spec.devices}")
        self.dir.mkdir(parents=True, exist_ok=True)
        n, s, g, q = spec.count, spec.image_size, spec.grid, spec.rows
        self.images = self._open("images", np.uint16, (n, s, s))
        self.masks = self._open("masks", np.uint8, (n, q, g, g))
        self.labels = self._open("labels", np.uint8, (n, len(CHEXPERT_LABELS)))
        self.done = self._open("done", np.uint8, (n,))

    def _open(self, name: str, dtype: type, shape: tuple[int, ...]) -> np.memmap:
        path = self.dir / f"{name}.npy"
        mode = "r+" if path.exists() else "w+"
        return np.lib.format.open_memmap(path, mode=mode, dtype=dtype, shape=shape)

    def build(self) -> None:
        seeds = benchmark_split("train").seeds
        for i in np.flatnonzero(self.done == 0):
            self.images[i], self.masks[i], self.labels[i] = render_fine_record(
                seeds[int(i)], self.spec)
            self.done[i] = 1
            if i % 500 == 499:
                self.flush()
                print(f"rendered {i + 1}/{self.spec.count}", flush=True)
        self.flush()

    def flush(self) -> None:
        for array in (self.images, self.masks, self.labels, self.done):
            array.flush()

    def batch(self, index: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """(images (B, 1, S, S), masks (B, Q, g, g) in [0, 1], query weights (B, Q))."""
        order = np.sort(index)
        images = torch.from_numpy(self.images[order].astype(np.float32) / 65535.0)[:, None]
        masks = torch.from_numpy(self.masks[order].astype(np.float32) / 255.0)
        labels = torch.from_numpy(self.labels[order].astype(np.float32))
        return images, masks, query_weights(labels, self.spec.rows)


# --- training --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    log_every: int = 25


def load_head(folder: str | Path) -> FineGroundingHead:
    """A head saved by ``save_head`` (its config beside the weights)."""
    folder = Path(folder)
    cfg = HeadConfig(**json.loads((folder / HEAD_CONFIG_FILE).read_text())["head"])
    head = FineGroundingHead(cfg)
    head.load_state_dict(torch.load(folder / HEAD_FILE, map_location="cpu", weights_only=True))
    return head.eval()


def save_head(head: FineGroundingHead, folder: Path, meta: dict[str, object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), folder / HEAD_FILE)
    (folder / HEAD_CONFIG_FILE).write_text(
        json.dumps({"head": asdict(head.cfg), "stride": FINE_STRIDE, **meta}, indent=2) + "\n")


def train_step(encoder: CheXQueryEncoder, head: FineGroundingHead,
               optimizer: torch.optim.Optimizer, images: Tensor, masks: Tensor,
               weight: Tensor) -> float:
    with torch.no_grad():
        inputs = frozen_inputs(encoder, images)
    loss = fine_loss(head(inputs), masks, weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_head(encoder: CheXQueryEncoder, head: FineGroundingHead, cache: FineCache,
               options: TrainOptions, checkpoint: Path) -> list[float]:
    """Epochs over the cache (cosine learning rate), a checkpoint after each; resumes from
    ``checkpoint`` if it exists. Returns the mean loss per epoch run here."""
    device_params: list[Tensor] = [head.device_q, head.device_prior]  # free: larger steps
    rest = [p for p in head.parameters() if all(p is not d for d in device_params)]
    groups: list[dict[str, Any]] = [
        {"params": rest}, {"params": device_params, "lr": options.lr * DEVICE_LR_RATIO}]
    optimizer = torch.optim.AdamW(groups, lr=options.lr, weight_decay=options.weight_decay)
    return run_epochs(head, optimizer, cache.spec.count, options, checkpoint,
                      lambda index: train_step(encoder, head, optimizer, *cache.batch(index)))


def run_epochs(head: nn.Module, optimizer: torch.optim.Optimizer, count: int,
               options: TrainOptions, checkpoint: Path,
               step: Callable[[np.ndarray], float]) -> list[float]:
    """Shuffled epochs over ``count`` cached studies, ``step`` (one optimiser step on the
    studies it is given, returning the loss) per batch, under a cosine learning rate, with a
    checkpoint of head, optimiser and schedule after each epoch; resumes from
    ``checkpoint`` if it exists. Returns the mean loss per epoch run here."""
    steps_per_epoch = count // options.batch_size
    total = steps_per_epoch * options.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / total)))
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start = int(state["epoch"])
    means = []
    for epoch in range(start, options.epochs):
        order = np.random.default_rng([options.seed, epoch]).permutation(count)
        losses, began = [], time.perf_counter()
        head.train()
        for i in range(steps_per_epoch):
            losses.append(step(order[i * options.batch_size : (i + 1) * options.batch_size]))
            schedule.step()
            if (i + 1) % options.log_every == 0:
                print(f"epoch {epoch + 1} step {i + 1}/{steps_per_epoch} "
                      f"loss {np.mean(losses[-options.log_every:]):.4f} "
                      f"{time.perf_counter() - began:.0f}s", flush=True)
        means.append(float(np.mean(losses)))
        print(f"epoch {epoch + 1} mean loss {means[-1]:.4f}", flush=True)
        torch.save({"head": head.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "epoch": epoch + 1}, checkpoint)
    return means


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def train(model_dir: Path = Path("radreport/model/default"),
          out: Path = Path("var/fine-head"),
          work: Path = Path("/tmp/fine-grounding"), count: int = 3000, epochs: int = 3,
          batch_size: int = 16, lr: float = 3e-3, threads: int = 2,
          build_only: bool = False) -> None:
    """Render train studies 0..count-1 (cached), train the head, save it into ``out``."""
    model, encoder, cache = frozen_run(model_dir, work, count, threads)
    if build_only:
        return
    head = FineGroundingHead(head_config_for(model))
    options = TrainOptions(epochs, batch_size, lr)
    began = time.perf_counter()
    means = train_head(encoder, head, cache, options, work / "checkpoint.pt")
    save_head(head, out, run_record(model_dir, count, options, means, began))
    print(f"saved {out / HEAD_FILE}", flush=True)


def frozen_run(model_dir: Path, work: Path, count: int, threads: int,
               ) -> tuple[RadReportModel, CheXQueryEncoder, FineCache]:
    """What a head's training starts from: the folder's model read back from its graphs
    (eval mode: exactly their function), its frozen encoder, and the train-split cache of
    studies 0..count-1 under ``work``, rendered where missing."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = recover_model(model_dir)
    encoder = frozen_encoder(model)
    cache = FineCache(work, CacheSpec(count, model.config.image_size))
    began = time.perf_counter()
    cache.build()
    print(f"cache ready in {time.perf_counter() - began:.0f}s", flush=True)
    return model, encoder, cache


def run_record(model_dir: Path, count: int, options: TrainOptions, means: list[float],
               began: float) -> dict[str, object]:
    """What a saved head records of the run that trained it."""
    return {"model": str(model_dir), "train_studies": count, "options": asdict(options),
            "epoch_losses": means, "train_seconds_this_run": round(time.perf_counter() - began)}


PARITY_OUTPUTS = ("label_probs", "features", "query_maps", "memory_kv")
COPIED_FILES = ("tokenizer.json", "intensity_reference.json", "calibration.json",
                "calibration.int8.json", "calibration.fp16.json")


def package_folder(model_dir: Path, head_dir: Path, out: Path, version: str,
                   parity_images: int = 8) -> dict[str, float]:
    """A model folder: ``model_dir``'s model with the trained head, re-exported (every
    variant). The head adds ``fine_query_maps`` and changes no other output: each
    variant's other outputs are compared with ``model_dir``'s on validate images
    (largest absolute difference per variant returned), so the folder keeps
    ``model_dir``'s calibration, OOD gate and drift reference. Grounding is refitted
    afterwards (``radreport fit-grounding``)."""
    import shutil

    from radreport.eval.evaluate import render_cases
    from radreport.model.export import convert_fp16, export_onnx, quantize_int8
    from radreport.model.onnx_runtime import OnnxReportModel
    from radreport.model.report import (
        MODEL_INFO_FILE,
        VARIANTS,
        ModelInfo,
        Variant,
        model_files,
        to_model_input,
    )

    model = attach(recover_model(model_dir), load_head(head_dir))
    out.mkdir(parents=True, exist_ok=True)
    encoder, decoder = export_onnx(model, out)
    converters: tuple[tuple[Variant, Callable[[Path, Path], Path]], ...] = (
        ("int8", quantize_int8), ("fp16", convert_fp16))
    for variant, convert in converters:
        if model_files(model_dir, variant)[0].exists():
            for graph in (encoder, decoder):
                convert(graph, graph.with_name(f"{graph.stem}.{variant}.onnx"))
    for name in COPIED_FILES:
        if (model_dir / name).exists():
            shutil.copyfile(model_dir / name, out / name)
    info = ModelInfo.load(model_dir / MODEL_INFO_FILE)
    head_meta = json.loads((head_dir / HEAD_CONFIG_FILE).read_text())
    extra = {**info.extra, "model_config": model.config.to_dict(),
             "parameters": model.num_params(),
             "fine_head": {"from": info.model_version, **head_meta}}
    ModelInfo(info.name, version, info.image_size, info.labels, extra).save(out / MODEL_INFO_FILE)
    size = info.image_size
    cases = render_cases(benchmark_split("validate").seeds[:parity_images])
    images = np.stack([to_model_input(c.image, size)[0] for c in cases])[:, None]
    gaps: dict[str, float] = {}
    for variant in VARIANTS:
        if not model_files(out, variant)[0].exists():
            continue
        old = OnnxReportModel(*model_files(model_dir, variant)).encode(images)
        new = OnnxReportModel(*model_files(out, variant)).encode(images)
        gaps[variant] = max(float(np.abs(getattr(old, k) - getattr(new, k)).max())
                            for k in PARITY_OUTPUTS if getattr(old, k) is not None)
    return gaps


@app.command()
def package(model_dir: Path = Path("radreport/model/default"),
            head_dir: Path = Path("var/fine-head"),
            out: Path = Path("var/model-fine"), version: str = "0.4.0",
            max_gap: float = 1e-3) -> None:
    """Write a model folder with the head (see ``package_folder``); fails if any other
    output moved by more than ``max_gap``."""
    gaps = package_folder(model_dir, head_dir, out, version)
    for variant, gap in gaps.items():
        print(f"{variant}: largest difference of the other encoder outputs {gap:.2e}")
    if max(gaps.values()) > max_gap:
        raise typer.Exit(1)
    print(f"wrote {out}; now: radreport fit-grounding --model {out}")


@app.command()
def measure(model_dir: Path = Path("radreport/model/default"),
            head_dir: Path = Path("var/fine-head"),
            count: int = 1000, fit_count: int = 500, threads: int = 2) -> None:
    """Pointing and IoU per finding on validate (see ``fine_grounding_eval``)."""
    from radreport.model.fine_grounding_eval import run_measurement

    torch.set_num_threads(threads)
    run_measurement(model_dir, head_dir, count, fit_count)


if __name__ == "__main__":
    app()
