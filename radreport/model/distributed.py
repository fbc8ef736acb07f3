"""Data-parallel training under ``torchrun``: process group, samplers, SyncBatchNorm, reductions.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them a run is one
process and nothing here changes what it does (same sample order, no collectives). With
them every rank holds the whole model, trains on its shard of each global batch, and DDP
averages gradients, so ``train.batch_size`` is the global batch whatever the world size.
BatchNorm statistics are taken over the global batch too (SyncBatchNorm), so a 2-process
run follows the single-process loss curve (tested in tests/unit/model/test_distributed.py).
Rank 0 alone writes files; the others only compute.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits among the ranks of a run."""

    rank: int = 0
    local_rank: int = 0  # the GPU index on this node
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def from_env(environ: Mapping[str, str] = os.environ) -> DistContext:
    """The context ``torchrun`` describes in the environment; one process without it."""
    world = int(environ.get("WORLD_SIZE", "1"))
    rank, local = int(environ.get("RANK", "0")), int(environ.get("LOCAL_RANK", "0"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return DistContext(rank, local, world)


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """Each rank drives the GPU of its local rank; CPU ranks share the CPU."""
    if device.type == "cuda" and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return device


def init_process_group(ctx: DistContext, device: torch.device) -> bool:
    """NCCL for GPUs, gloo for CPUs; returns whether this call started the group (and so
    should end it)."""
    if not ctx.enabled or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            rank=ctx.rank, world_size=ctx.world_size)
    return True


def shutdown(started: bool) -> None:
    if started and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


@contextmanager
def main_first(ctx: DistContext) -> Iterator[None]:
    """Rank 0 runs the block first (writing tokenizer and cache files), then the others,
    who find the files complete; they never write the same file at once."""
    if not ctx.is_main:
        barrier(ctx)
    yield
    if ctx.is_main:
        barrier(ctx)


# --- batches and samplers -------------------------------------------------------------


def per_rank_batch(global_batch: int, world_size: int, grad_accum: int) -> int:
    """Examples per forward pass on one rank: the global batch split over ranks and
    accumulation steps, exactly, or an error naming all three."""
    parts = world_size * grad_accum
    if global_batch % parts:
        raise ValueError(f"train.batch_size {global_batch} must be a multiple of world size "
                         f"{world_size} x train.grad_accum {grad_accum}")
    return global_batch // parts


def steps_per_epoch(examples: int, world_size: int, grad_accum: int, global_batch: int) -> int:
    """Optimizer steps in one epoch, as ``DistributedSampler`` (padding) and a last, shorter
    accumulation group make them; ``ceil(examples / global_batch)`` on one process."""
    per_rank = math.ceil(examples / world_size)
    micro = math.ceil(per_rank / per_rank_batch(global_batch, world_size, grad_accum))
    return math.ceil(micro / grad_accum)


class EpochSampler(DistributedSampler[int]):
    """``DistributedSampler`` whose permutation for ``seed + epoch`` is the one that
    ``DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed + epoch))``
    gave one-process runs before torchrun support (the loader draws its worker seed from
    that generator first), so those runs keep their sample order and figures."""

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the worker seed
        size = len(self.dataset)  # type: ignore[arg-type]
        indices = torch.randperm(size, generator=generator).tolist()
        padding = self.total_size - size  # repeat the first ones, as DistributedSampler does
        indices += (indices * math.ceil(padding / size))[:padding] if padding else []
        return iter(indices[self.rank : self.total_size : self.num_replicas])


def train_sampler(size: int, ctx: DistContext, seed: int) -> EpochSampler:
    """This rank's share of a permutation seeded by ``seed + epoch`` (``set_epoch``).

    Rank r takes positions r, r + W, ... so step k's global batch is the same set of
    examples for any world size (with per-rank batches of global / W).
    """
    indices: Any = range(size)  # only its length matters to the sampler
    return EpochSampler(indices, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                        seed=seed, drop_last=False)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + W, ...`` without padding: evaluation sees every example once."""

    def __init__(self, size: int, ctx: DistContext) -> None:
        self.indices = range(ctx.rank, size, ctx.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive groups of ``size`` (the last may be shorter): the accumulation groups."""
    it = iter(items)
    while group := list(islice(it, size)):
        yield group


# --- the model ------------------------------------------------------------------------


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every rank's loss
    depends on every rank's input through the sum."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def sum_over_ranks(tensor: Tensor) -> Tensor:
    out: Tensor = _SumOverRanks.apply(tensor)
    return out


class GlooSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span all ranks, for CPU (gloo) runs, where
    ``nn.SyncBatchNorm`` refuses to run. Two passes (mean, then squared deviations) through
    differentiable all-reduces, so gradients flow through the global statistics as in
    ``nn.SyncBatchNorm``. Same parameters, buffers and state-dict keys as BatchNorm2d."""

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        all_reduce = sum_over_ranks
        x = input.float()  # statistics in fp32 under autocast too
        dims = (0, 2, 3)
        count = all_reduce(x.new_tensor([x.numel() / x.size(1)]))
        mean = all_reduce(x.sum(dims)) / count
        centred = x - mean[None, :, None, None]
        var = all_reduce(centred.square().sum(dims)) / count  # biased, as used to normalize
        self._update_running(mean.detach(), var.detach(), float(count))
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(input.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, count: float) -> None:
        if not self.track_running_stats or self.running_mean is None:
            return
        assert self.running_var is not None and self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                  else self.momentum)
        unbiased = var * count / max(count - 1.0, 1.0)
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(unbiased, factor)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers that share statistics across ranks: torch's own on GPUs, ours on
    CPU. Parameters and buffers are kept (the same tensors), so the optimizer built
    afterwards and checkpoints see no difference."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = GlooSyncBatchNorm2d(child.num_features, child.eps, child.momentum,
                                       child.affine, child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return model


def wrap(model: nn.Module, ctx: DistContext, device: torch.device,
         compile_model: bool) -> nn.Module:
    """The module the training step calls: ``model`` itself on one process, else under
    DistributedDataParallel (which broadcasts rank 0's weights now); optionally compiled.
    Checkpoints, evaluation and export keep using ``model``."""
    net: nn.Module = model
    if ctx.enabled:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_model:
        net = torch.compile(net)  # type: ignore[assignment]
    return net


def no_sync(net: nn.Module, sync: bool) -> AbstractContextManager[Any]:
    """DDP's ``no_sync`` (skip the gradient all-reduce) on accumulation steps before the
    last; a plain context otherwise."""
    inner = getattr(net, "_orig_mod", net)  # under torch.compile
    if not sync and isinstance(inner, DistributedDataParallel):
        return inner.no_sync()
    return nullcontext()


# --- reductions -----------------------------------------------------------------------


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Sums over ranks (in float64, so means over a whole epoch are exact enough)."""
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def mean_over_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """The same figures on every rank: their mean over ranks."""
    if not ctx.enabled:
        return values
    sums = all_reduce_sum(list(values.values()), ctx)
    return {k: v / ctx.world_size for k, v in zip(values, sums, strict=True)}


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` in rank order (all ranks must call it)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


# --- per-step log ---------------------------------------------------------------------


STEP_COLUMNS: tuple[str, ...] = ("epoch", "step", "lr", "loss", "lm", "ground", "entropy",
                                 "label", "query", "grad_norm")
STEPS_FILE = "steps.csv"


class StepLog:
    """``steps.csv``: the training loss of every ``log_every``-th optimizer step, averaged
    over ranks, for loss curves finer than epochs. Rank 0 writes; others hold no file."""

    def __init__(self, out_dir: Path, ctx: DistContext) -> None:
        self.path = out_dir / STEPS_FILE if ctx.is_main else None

    def write(self, row: dict[str, float]) -> None:
        if self.path is not None:
            append_row(self.path, STEP_COLUMNS, row)


def append_row(path: Path, columns: Sequence[str], row: Mapping[str, float]) -> None:
    """One CSV row in ``columns`` order (missing ones empty), the header first in a new file:
    ``steps.csv`` here and ``metrics.csv`` in train.py."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in columns})


def read_steps(run: Path) -> list[dict[str, float]]:
    with (run / STEPS_FILE).open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


__all__ = [
    "SINGLE", "DistContext", "GlooSyncBatchNorm2d", "ShardSampler", "StepLog", "append_row",
    "convert_sync_batchnorm", "from_env", "per_rank_batch", "read_steps", "train_sampler",
    "wrap",
]
