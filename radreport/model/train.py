"""Train the grounded report model from a TOML config, with exact resume from ``last.pt``.

A run directory holds everything needed to continue or use it: ``config.toml`` (the
resolved config), ``tokenizer.json``, ``last.pt`` (everything resume needs, written every
epoch), ``best.pt`` (lowest validation loss) and ``metrics.csv`` (one row per epoch).
Phantom studies are slow to render, so by default every item is rendered once, up front,
into an in-memory cache (float16) and later epochs only index tensors. Shuffling uses a
generator seeded by ``(seed, epoch)`` and the global torch RNG is checkpointed, so on CPU
"train 2 epochs" and "train 1, resume, train 1" give the same weights. The optimizer step,
evaluation and BatchNorm re-estimation live in steps.py; torchrun support in distributed.py.
"""

from __future__ import annotations

import math
import time
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from radreport.model import distributed as ddp
from radreport.model.cache import (
    ExampleOptions,
    LiveRecords,
    RecordDataset,
    RecordSource,
    StudyCache,
    file_hash,
    spec_for,
)
from radreport.model.config import ModelConfig
from radreport.model.data import DataConfig, Example, phantom_report_texts
from radreport.model.model import RadReportModel
from radreport.model.pretrained import load_pretrained, param_groups, prepare
from radreport.model.records import check_data_config, real_tokenizer, streaming_dataset
from radreport.model.steps import (
    PARTS,
    evaluate,
    lr_factor,
    make_scheduler,
    recalibrate_batchnorm,
    resolve_amp,
    resolve_device,
    train_step,
)
from radreport.model.tokenizer import ReportTokenizer
from radreport.model.tracking import Tracker, open_run

METRIC_COLUMNS: tuple[str, ...] = (
    "epoch", "step", "lr",
    *(f"train_{p}" for p in PARTS), *(f"val_{p}" for p in PARTS), "seconds",
    "unreadable",  # training images found unreadable and skipped so far
)
TOKENIZER_FILE, CONFIG_FILE, METRICS_FILE = "tokenizer.json", "config.toml", "metrics.csv"
LAST, BEST = "last.pt", "best.pt"


# --- config ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimConfig:
    seed: int = 0
    epochs: int = 10
    batch_size: int = 32  # global: split over ranks (torchrun) and grad_accum steps
    grad_accum: int = 1  # forward/backward passes per optimizer step
    compile: bool = False  # torch.compile the training forward
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # final lr as a fraction of ``lr``
    grad_clip: float = 1.0
    amp: str = "auto"  # auto (CUDA only: bf16 if supported, else fp16) | off | bf16 | fp16
    log_every: int = 10
    eval_every_epoch: int = 1
    checkpoint_dir: str = ""  # relative to the run directory; "" = the run directory
    device: str = "auto"
    bn_batches: int = 50  # training batches that recompute BatchNorm statistics each epoch
    init_from: str = ""  # a model folder whose ONNX weights and tokenizer start the run
    backbone_lr_ratio: float = 1.0  # model.backbone's lr as a fraction of lr (pretrained.py)
    freeze_backbone: bool = False  # model.backbone: no gradients, its BatchNorm stats fixed
    lora_rank: int = 0  # > 0: LoRA (peft) on the decoder's self-attention and MLP (lora.py)
    lora_alpha: int = 16  # LoRA updates are scaled by lora_alpha / lora_rank
    lora_dropout: float = 0.0
    track: bool = True  # MLflow (tracking.py): $MLFLOW_TRACKING_URI, else <run dir>/mlflow


@dataclass(frozen=True)
class TrainConfig:
    # ModelConfig fields except (optionally) vocab_size, which the tokenizer decides.
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": dict(self.model), "data": asdict(self.data), "train": asdict(self.train)}


AMP_CHOICES = ("auto", "off", "bf16", "fp16")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a TOML config, then apply dotted ``section.key=value`` overrides."""
    with Path(path).open("rb") as f:
        raw = tomllib.load(f)
    return apply_overrides(config_from_dict(raw), overrides)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Type-checked config; an unknown section or key is an error that names it."""
    unknown = sorted(set(raw) - {"model", "data", "train"})
    if unknown:
        raise ValueError(f"unknown config sections: {unknown}")
    model = _check_model_section(dict(raw.get("model", {})))
    data = _section(DataConfig, "data", raw.get("data", {}))
    opt = _section(OptimConfig, "train", raw.get("train", {}))
    config = TrainConfig(model, data, opt)
    _validate(config)
    return config


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """``train.epochs=1``, ``data.train_seeds=[0, 64]``: values are TOML, else strings."""
    raw = config.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or parts[0] not in raw:
            raise ValueError(f"bad override {item!r}: expected section.key=value with section "
                             f"in {sorted(raw)}")
        section, name = parts
        if section != "model" and name not in raw[section]:
            raise ValueError(f"unknown config key {key.strip()!r}")
        raw[section][name] = _parse_value(text.strip())
    return config_from_dict(raw)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _section(cls: type[Any], name: str, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys: {[f'{name}.{k}' for k in unknown]}")
    return cls(**{k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()})


def _check_model_section(values: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(ModelConfig)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown config keys: {[f'model.{k}' for k in unknown]}")
    checked = {k: _coerce(f"model.{k}", v, hints[k]) for k, v in values.items()}
    ModelConfig(**{"vocab_size": 8, **checked})  # shape checks now, not after an hour
    return checked


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (ints widen to float, lists become tuples), or an error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise TypeError(f"config key {key!r} must be a list, got {value!r}")
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not variadic and len(value) != len(args):
            raise TypeError(f"config key {key!r} must have {len(args)} items, got {value!r}")
        kinds = [args[0]] * len(value) if variadic else list(args)
        return tuple(_coerce(key, v, k) for v, k in zip(value, kinds, strict=True))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise TypeError(f"config key {key!r} must be {hint.__name__}, got {value!r}")
    return value


def _validate(config: TrainConfig) -> None:
    d, t = config.data, config.train
    check_data_config(d)
    if t.amp not in AMP_CHOICES:
        raise ValueError(f"train.amp {t.amp!r} must be one of {AMP_CHOICES}")
    positive = {"train.epochs": t.epochs, "train.batch_size": t.batch_size,
                "train.grad_accum": t.grad_accum,
                "data.train_seeds count": d.train_seeds[1],
                "data.validate_seeds count": d.validate_seeds[1],
                "data.tokenizer_corpus": d.tokenizer_corpus}
    bad = [name for name, value in positive.items() if value < 1]
    if bad:
        raise ValueError(f"must be at least 1: {bad}")
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        raise ValueError(f"train.min_lr_ratio {t.min_lr_ratio} must be a fraction of lr in [0, 1]")


def config_to_toml(config: TrainConfig) -> str:
    """The resolved config as TOML that ``load_config`` reads back identically."""
    lines: list[str] = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


# --- data -----------------------------------------------------------------------------


def build_tokenizer(config: TrainConfig) -> ReportTokenizer:
    """Vocabulary from train-split reports and indications only (text does not depend on
    size)."""
    if config.data.dataset != "phantoms":
        return real_tokenizer(config.data)
    first, count = config.data.train_seeds
    n = min(count, config.data.tokenizer_corpus)
    return ReportTokenizer.train(phantom_report_texts(range(first, first + n), size=256))


def build_dataset(seeds: tuple[int, int], tokenizer: ReportTokenizer, model_config: ModelConfig,
                  config: TrainConfig, out_dir: Path, progress: bool, desc: str,
                  train: bool) -> RecordDataset:
    """Phantom ``seeds`` (cached or live); a real dataset's train or validate split."""
    if config.data.dataset != "phantoms":
        return streaming_dataset(config.data, "train" if train else "validate", tokenizer,
                                 model_config, config.train.seed, train, progress)
    first, count = seeds
    data = config.data
    spec = spec_for(model_config)
    records: RecordSource
    if data.cache:
        root = Path(data.cache_dir) if data.cache_dir else out_dir / "cache"
        records = StudyCache(root, range(first, first + count), spec, data.study_size,
                             file_hash(out_dir / TOKENIZER_FILE))
        records.build(tokenizer, data.num_workers, progress, desc)
    else:
        records = LiveRecords(range(first, first + count), spec, data.study_size, tokenizer)
    options = ExampleOptions(data.context_dropout, data.augment)
    return RecordDataset(records, tokenizer, model_config, options, config.train.seed, train)


def make_loader(dataset: Dataset[Example], config: TrainConfig, shuffle_seed: int | None,
                ctx: ddp.DistContext = ddp.SINGLE, epoch: int = 0) -> DataLoader[Example]:
    """This rank's share, in batches of ``per_rank_batch``. Shuffled by ``shuffle_seed +
    epoch`` (the sampler's ``set_epoch``), so the order does not depend on RNG history;
    unshuffled (``None``) shards are not padded, so evaluation sees each example once."""
    size = len(dataset)  # type: ignore[arg-type]
    sampler: ddp.ShardSampler | ddp.EpochSampler = ddp.ShardSampler(size, ctx)
    generator = None
    if shuffle_seed is not None:
        sampler = ddp.train_sampler(size, ctx, shuffle_seed)
        sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(shuffle_seed + epoch)  # worker seeds
    t = config.train
    batch_size = ddp.per_rank_batch(t.batch_size, ctx.world_size, t.grad_accum)
    workers = 0 if config.data.cache and config.data.dataset == "phantoms" else (
        config.data.num_workers)  # a real dataset's images are decoded in workers
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator,
                      num_workers=workers)


# --- checkpoints and logs -------------------------------------------------------------


@dataclass
class RunState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_val: float = math.inf


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: RadReportModel, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler,
                    scaler: torch.amp.GradScaler, state: RunState, config: TrainConfig,
                    rng_ranks: list[dict[str, Any]] | None = None) -> None:
    """Write to a temporary file first, so a crash never leaves a torn ``last.pt``.
    ``rng_ranks``: every rank's RNG state, in rank order, for an exact torchrun resume."""
    extra = {"rng_ranks": rng_ranks} if rng_ranks else {}
    payload = model.checkpoint(
        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict(), epoch=state.epoch, step=state.step,
        best_val=state.best_val, rng=rng_state(), train_config=config.to_dict(), **extra,
    )
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


class MetricsLog:
    """Appends one row per epoch to ``metrics.csv``, to TensorBoard when installed, and to
    an MLflow run when given one (``tracking.py``)."""

    def __init__(self, out_dir: Path, tracker: Tracker | None = None) -> None:
        self.path = out_dir / METRICS_FILE
        self.tracker = tracker
        self.writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            pass
        else:
            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, row: dict[str, float]) -> None:
        ddp.append_row(self.path, METRIC_COLUMNS, row)
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and math.isfinite(v):
                    self.writer.add_scalar(k.replace("_", "/", 1), v, int(row["epoch"]))
            self.writer.flush()
        if self.tracker is not None:
            self.tracker.log_metrics(row, step=int(row["epoch"]))

    def close(self, completed: bool = True) -> None:
        """``completed``: the call ended without an error (a ``stop_after`` stop counts)."""
        if self.writer is not None:
            self.writer.close()
        if self.tracker is not None:
            self.tracker.end(completed, self.path)


# --- the loop -------------------------------------------------------------------------


@dataclass
class Trainer:
    config: TrainConfig
    model: RadReportModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    train_set: RecordDataset
    val_set: RecordDataset
    net: torch.nn.Module  # what the step calls: ``model``, or it under DDP / torch.compile
    ctx: ddp.DistContext = ddp.SINGLE
    step_log: ddp.StepLog | None = None
    state: RunState = field(default_factory=RunState)

    def run_epoch(self, progress: bool) -> dict[str, float]:
        """One pass over this rank's shard of the shuffled train set, ``grad_accum``
        batches per optimizer step; returns mean loss parts over all ranks."""
        t = self.config.train
        self.net.train()
        self.train_set.epoch = self.state.epoch
        loader = make_loader(self.train_set, self.config, t.seed * 1_000_003, self.ctx,
                             epoch=self.state.epoch)
        sums, n = dict.fromkeys(PARTS, 0.0), 0
        bar = tqdm(ddp.chunks(loader, t.grad_accum), total=math.ceil(len(loader) / t.grad_accum),
                   desc=f"epoch {self.state.epoch + 1}/{t.epochs}", disable=not progress,
                   leave=False)
        for group in bar:
            lr = self._lr()
            parts, norm = train_step(self.net, group, self.optimizer, self.scaler,
                                     t.grad_clip, self.amp_dtype)
            self.scheduler.step()
            self.state.step += 1
            for k in PARTS:
                sums[k] += parts[k]
            n += 1
            if self.state.step % max(1, t.log_every) == 0:
                logged = self._log_step(parts, norm, lr)
                bar.set_postfix(loss=f"{logged['loss']:.3f}", lr=f"{lr:.2e}")
        return ddp.mean_over_ranks({k: v / max(n, 1) for k, v in sums.items()}, self.ctx)

    def _log_step(self, parts: dict[str, float], norm: float, lr: float) -> dict[str, float]:
        """The step's loss parts averaged over ranks (all ranks call this), to steps.csv."""
        logged = ddp.mean_over_ranks({**parts, "grad_norm": norm}, self.ctx)
        if self.step_log is not None:
            self.step_log.write({"epoch": self.state.epoch + 1, "step": self.state.step,
                                 "lr": lr, **logged})
        return logged

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def train(config: TrainConfig, out_dir: Path, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> Path:
    """Train (or resume) into ``out_dir``; returns the path of ``best.pt``.

    ``stop_after`` ends this call after that many epochs in total without changing the
    schedule, as a time-limited job would; a later ``resume=True`` carries on. Under
    ``torchrun`` (distributed.py) every rank calls this; rank 0 alone writes files.
    """
    ctx = ddp.from_env()
    device = ddp.rank_device(resolve_device(config.train.device), ctx)
    started = ddp.init_process_group(ctx, device)
    try:
        return _train(config, Path(out_dir), resume, progress and ctx.is_main, stop_after,
                      ctx)
    finally:
        ddp.shutdown(started)


def _train(config: TrainConfig, out_dir: Path, resume: bool, progress: bool,
           stop_after: int | None, ctx: ddp.DistContext) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / config.train.checkpoint_dir
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        (out_dir / CONFIG_FILE).write_text(config_to_toml(config))
    torch.manual_seed(config.train.seed)
    with ddp.main_first(ctx):  # the other ranks read rank 0's tokenizer file
        tokenizer = _tokenizer(config, out_dir, resume or not ctx.is_main)
    trainer = _build(config, tokenizer, out_dir, progress, ctx)
    if resume:
        _resume(trainer, ckpt_dir / LAST)
    last_epoch = config.train.epochs if stop_after is None else min(stop_after,
                                                                    config.train.epochs)
    tracker = (open_run(out_dir, config.to_dict(), out_dir / CONFIG_FILE, resume)
               if ctx.is_main and config.train.track else None)
    log = MetricsLog(out_dir, tracker) if ctx.is_main else None
    completed = False
    try:
        while trainer.state.epoch < last_epoch:
            _epoch(trainer, ckpt_dir, log, progress)
        completed = True
    finally:
        if log is not None:
            log.close(completed)
    return ckpt_dir / BEST


def _tokenizer(config: TrainConfig, out_dir: Path, resume: bool) -> ReportTokenizer:
    path = out_dir / TOKENIZER_FILE
    if resume and path.exists():
        return ReportTokenizer.load(path)
    init = config.train.init_from
    tokenizer = (ReportTokenizer.load(Path(init) / TOKENIZER_FILE) if init
                 else build_tokenizer(config))
    tokenizer.save(path)
    return tokenizer


def model_config_for(config: TrainConfig, tokenizer: ReportTokenizer) -> ModelConfig:
    values = {"vocab_size": tokenizer.vocab_size, **config.model}
    return ModelConfig(**values)


def _build(config: TrainConfig, tokenizer: ReportTokenizer, out_dir: Path,
           progress: bool, ctx: ddp.DistContext = ddp.SINGLE) -> Trainer:
    t = config.train
    model_config = model_config_for(config, tokenizer)
    device = ddp.rank_device(resolve_device(t.device), ctx)
    with ddp.main_first(ctx):  # rank 0 fills the on-disk cache; the others find it complete
        train_set = build_dataset(config.data.train_seeds, tokenizer, model_config, config,
                                  out_dir, progress, "render train", train=True)
        val_set = build_dataset(config.data.validate_seeds, tokenizer, model_config, config,
                                out_dir, progress, "render validate", train=False)
    model = prepare(_initial_model(config, model_config, train_set) if t.init_from
                    else load_pretrained(RadReportModel(model_config), [
                        tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]),
                    t.freeze_backbone, t.lora_rank, t.lora_alpha, t.lora_dropout).to(device)
    if ctx.enabled:  # BatchNorm statistics over the global batch, as on one process
        model = typing.cast(RadReportModel, ddp.convert_sync_batchnorm(model, device))
        torch.manual_seed(t.seed * 1_000_003 + ctx.rank)  # own dropout masks per rank
    optimizer = torch.optim.AdamW(param_groups(model, t.lr, t.backbone_lr_ratio), lr=t.lr,
                                  weight_decay=t.weight_decay)
    total = t.epochs * ddp.steps_per_epoch(len(train_set), ctx.world_size, t.grad_accum,
                                           t.batch_size)
    scheduler = make_scheduler(optimizer, t.warmup_steps, total, t.min_lr_ratio)
    amp_dtype = resolve_amp(t.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return Trainer(config, model, optimizer, scheduler, scaler, device, amp_dtype,
                   train_set, val_set, ddp.wrap(model, ctx, device, t.compile), ctx,
                   ddp.StepLog(out_dir, ctx))


def _initial_model(config: TrainConfig, model_config: ModelConfig,
                   train_set: RecordDataset) -> RadReportModel:
    """The ``init_from`` folder's model (onnx_weights.py), its BatchNorm statistics
    measured on ``bn_batches`` training batches."""
    from radreport.model.onnx_weights import recover_model

    loader = make_loader(train_set, config, shuffle_seed=7_919)
    images = (batch["images"] for _, batch in zip(range(config.train.bn_batches), loader,
                                                    strict=False))
    model = recover_model(config.train.init_from, images, image_size=model_config.image_size)
    if model.config != model_config:
        raise ValueError(f"{config.train.init_from} has another model config than the run's: "
                         f"{model.config}")
    return model


def _resume(trainer: Trainer, path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"cannot resume: {path} does not exist")
    ckpt = torch.load(path, map_location=trainer.device, weights_only=True)
    saved = ModelConfig.from_dict(ckpt["config"])
    if saved != trainer.model.config:
        raise ValueError(f"{path} was trained with a different model config: {saved}")
    trainer.model.load_state_dict(ckpt["state_dict"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scheduler.load_state_dict(ckpt["scheduler"])
    trainer.scaler.load_state_dict(ckpt["scaler"])
    trainer.state = RunState(ckpt["epoch"], ckpt["step"], ckpt["best_val"])
    ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
    rng = ranks[trainer.ctx.rank] if len(ranks) == trainer.ctx.world_size else ranks[0]
    set_rng_state({k: _cpu(v) for k, v in rng.items()})


def _cpu(value: Any) -> Any:
    if isinstance(value, list):
        return [v.cpu() for v in value]
    return value.cpu()


def _epoch(trainer: Trainer, ckpt_dir: Path, log: MetricsLog | None, progress: bool) -> None:
    """Train, validate, checkpoint, log: the order keeps ``last.pt`` ahead of the CSV."""
    start = time.perf_counter()
    lr = trainer._lr()
    train_parts = trainer.run_epoch(progress)
    trainer.state.epoch += 1
    row: dict[str, float] = {"epoch": trainer.state.epoch, "step": trainer.state.step, "lr": lr}
    row.update({f"train_{k}": v for k, v in train_parts.items()})
    # each rank counts what it read of its shard
    row["unreadable"] = ddp.all_reduce_sum([trainer.train_set.unreadable()], trainer.ctx)[0]
    every = max(1, trainer.config.train.eval_every_epoch)
    final = trainer.state.epoch == trainer.config.train.epochs
    t, ctx = trainer.config.train, trainer.ctx
    recalibrate_batchnorm(trainer.model, make_loader(trainer.train_set, trainer.config, 7_919,
                                                     ctx, epoch=trainer.state.epoch),
                          trainer.device, t.bn_batches * t.grad_accum)
    if trainer.state.epoch % every == 0 or final:
        loader = make_loader(trainer.val_set, trainer.config, None, ctx)
        val = evaluate(trainer.model, loader, trainer.device, trainer.amp_dtype, ctx)
        row.update({f"val_{k}": v for k, v in val.items()})
        _save_best(trainer, ckpt_dir, val["loss"])
    _save(trainer, ckpt_dir / LAST)
    row["seconds"] = time.perf_counter() - start
    if log is not None:
        log.write(row)
    if progress:
        tqdm.write(_summary(row))


def _save_best(trainer: Trainer, ckpt_dir: Path, val_loss: float) -> None:
    if val_loss < trainer.state.best_val:
        trainer.state.best_val = val_loss
        _save(trainer, ckpt_dir / BEST)


def _save(trainer: Trainer, path: Path) -> None:
    """Rank 0 writes, with every rank's RNG state (all ranks must call this)."""
    ranks = ddp.gather_objects(rng_state(), trainer.ctx)
    if trainer.ctx.is_main:
        save_checkpoint(path, trainer.model, trainer.optimizer, trainer.scheduler,
                        trainer.scaler, trainer.state, trainer.config,
                        rng_ranks=ranks if trainer.ctx.enabled else None)


def _summary(row: dict[str, float]) -> str:
    text = f"epoch {int(row['epoch'])} step {int(row['step'])} train {row['train_loss']:.4f}"
    if "val_loss" in row:
        text += f" val {row['val_loss']:.4f}"
    return text + f" ({row['seconds']:.0f} s)"


__all__ = [
    "DataConfig", "OptimConfig", "TrainConfig", "apply_overrides", "config_from_dict",
    "config_to_toml", "evaluate", "load_config", "lr_factor", "recalibrate_batchnorm",
    "resolve_amp", "resolve_device", "train", "train_step",
]
