"""One optimizer step, evaluation and BatchNorm re-estimation, on one process or one rank.

Split out of train.py (which keeps the config, data, checkpoints and the loop) so that
file stays readable; train.py re-exports these names. Under torchrun the step may get a
DDP-wrapped model and several accumulated batches, and evaluation all-reduces its sums
(distributed.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

from radreport.model import distributed as ddp
from radreport.model.data import Example
from radreport.model.model import RadReportModel

PARTS: tuple[str, ...] = ("loss", "lm", "ground", "entropy", "label", "query")


# --- schedule, precision ----------------------------------------------------------


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1 over ``warmup_steps``, then cosine down to ``min_ratio`` at the end."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                   min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps, total_steps, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for full float32. ``auto`` turns AMP on for CUDA only."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: Example, device: torch.device) -> Example:
    """Cached float16 tensors go back to float32: the model and its losses run in fp32."""
    return {k: (v.float() if v.dtype == torch.float16 else v).to(device, non_blocking=True)
            for k, v in trim_padding(batch).items()}


SEQUENCE_KEYS = ("tokens", "targets", "region_masks", "finding_token_mask")


def trim_padding(batch: Example, pad_id: int = 0) -> Example:
    """Cut the positions after the batch's longest report: most reports are far shorter
    than ``max_len``, and padded positions cost as much as real ones."""
    if "targets" not in batch:
        return batch
    real = (batch["targets"] != pad_id).any(dim=0).nonzero()
    length = int(real.max()) + 1 if real.numel() else 1
    return {k: (v[:, :length] if k in SEQUENCE_KEYS else v) for k, v in batch.items()}


def train_step(model: torch.nn.Module, batch: Example | Sequence[Example],
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               grad_clip: float, amp_dtype: torch.dtype | None,
               ) -> tuple[dict[str, float], float]:
    """One optimizer step over one batch, or over several accumulated (gradients summed,
    each batch weighted by its share of the examples, so the step sees their mean loss).
    Returns the loss parts (that same mean) and the gradient norm before clipping.
    ``model`` may be DDP-wrapped: only the last batch's backward all-reduces gradients."""
    batches = [batch] if isinstance(batch, dict) else list(batch)
    device = next(model.parameters()).device
    total = sum(b["images"].size(0) for b in batches)
    optimizer.zero_grad(set_to_none=True)
    sums = dict.fromkeys(PARTS, 0.0)
    for i, micro in enumerate(batches):
        weight = micro["images"].size(0) / total
        with ddp.no_sync(model, sync=i == len(batches) - 1):
            with autocast(device, amp_dtype):
                out = model(**to_device(micro, device))
            assert out.loss is not None
            scaler.scale(out.loss * weight).backward()
        for k, v in _parts(out.loss, out.loss_parts).items():
            sums[k] = sums.get(k, 0.0) + v * weight
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return sums, float(norm)


def _parts(loss: Tensor, parts: dict[str, Tensor]) -> dict[str, float]:
    return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}


@torch.no_grad()
def recalibrate_batchnorm(model: RadReportModel, loader: Iterable[Example], device: torch.device,
                          batches: int) -> None:
    """Running BatchNorm statistics as the plain mean over ``batches`` training batches.

    During training the running statistics are a fast moving average that lags behind
    weights that are still moving (at lr 1e-3 it measurably did: v2's validation label
    BCE was 0.42 with them and 0.08 with batch statistics), and evaluation, export and
    serving use them. Recomputing them with the final weights fixes that. A no-op for
    models without BatchNorm (v1).
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for i, batch in enumerate(loader):
        if i == batches:
            break
        model.encode(to_device(batch, device)["images"])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def evaluate(model: RadReportModel, loader: Iterable[Example], device: torch.device,
             amp_dtype: torch.dtype | None,
             ctx: ddp.DistContext = ddp.SINGLE) -> dict[str, float]:
    """Mean loss parts over a loader, weighted by batch size; under torchrun each rank
    reads its shard and the sums are all-reduced, so every rank returns the same figures."""
    model.eval()
    sums = dict.fromkeys(PARTS, 0.0)
    count = 0
    for batch in loader:
        with autocast(device, amp_dtype):
            out = model(**to_device(batch, device))
        assert out.loss is not None
        n = batch["images"].size(0)
        for k, v in _parts(out.loss, out.loss_parts).items():
            sums[k] += v * n
        count += n
    *totals, examples = ddp.all_reduce_sum([*sums.values(), count], ctx)
    return {k: v / max(examples, 1) for k, v in zip(sums, totals, strict=True)}


