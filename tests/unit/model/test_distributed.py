"""The single-process side of data-parallel training: how the global batch is split over
ranks and accumulation steps, the sample order, gradient accumulation against the full
batch, and bf16 autocast on CPU. torchrun itself: tests/integration/test_torchrun.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from radreport.model.cache import PhantomReportDataset
from radreport.model.distributed import (
    SINGLE,
    DistContext,
    from_env,
    per_rank_batch,
    read_steps,
    steps_per_epoch,
    train_sampler,
)
from radreport.model.model import RadReportModel
from radreport.model.steps import resolve_amp, train_step
from radreport.model.train import load_config, model_config_for, train

TINY_V2 = Path(__file__).parents[3] / "radreport" / "model" / "configs" / "tiny-v2.toml"
TOLERANCE = 0.01  # the issue's: relative loss difference at each of 20 steps


def test_global_batch_splits_exactly_over_ranks_and_steps() -> None:
    assert per_rank_batch(32, 8, 2) == 2
    with pytest.raises(ValueError, match=r"batch_size 32 .* world size 3 x train.grad_accum 1"):
        per_rank_batch(32, 3, 1)
    assert steps_per_epoch(100, 1, 1, 32) == 4  # ceil(100 / 32), as before DDP
    assert steps_per_epoch(100, 2, 2, 8) == 13  # 50 a rank, 25 batches of 2, 13 groups


def test_each_step_sees_the_same_examples_for_any_world_size() -> None:
    seed, n, batch = 11, 23, 4
    single = list(train_sampler(n, SINGLE, seed))
    # one process: exactly the order DataLoader(shuffle=True) gave before, same seed
    items: Any = range(n)
    loader: DataLoader[int] = DataLoader(items, batch_size=batch, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    assert single == [int(i) for b in loader for i in b]
    ranks = [list(train_sampler(n, DistContext(r, r, 2), seed)) for r in range(2)]
    for step in range(n // (2 * batch)):
        window = slice(step * batch, (step + 1) * batch)
        assert sorted(ranks[0][window] + ranks[1][window]) == sorted(
            single[2 * step * batch: 2 * (step + 1) * batch])
    shuffled = train_sampler(n, SINGLE, seed)
    shuffled.set_epoch(1)
    assert list(shuffled) != single  # a new order every epoch


def test_environment_from_torchrun() -> None:
    assert from_env({}) == SINGLE
    ctx = from_env({"WORLD_SIZE": "16", "RANK": "9", "LOCAL_RANK": "1"})
    assert (ctx.enabled, ctx.is_main, ctx.local_rank) == (True, False, 1)
    with pytest.raises(ValueError, match="RANK=4"):
        from_env({"WORLD_SIZE": "4", "RANK": "4"})


def test_gradient_accumulation_follows_the_full_batch(tmp_path: Path) -> None:
    cache = f'data.cache_dir="{tmp_path / "cache"}"'
    runs = {accum: tmp_path / f"accum{accum}" for accum in (1, 2)}
    for accum, out in runs.items():
        config = load_config(TINY_V2, [cache, "train.track=false", f"train.grad_accum={accum}"])
        train(config, out, progress=False)
    full, halves = (read_steps(out) for out in runs.values())
    assert [r["step"] for r in halves] == [r["step"] for r in full] == list(range(1, 21))
    gaps = [abs(h["loss"] - f["loss"]) / f["loss"] for h, f in zip(halves, full, strict=True)]
    assert max(gaps) <= TOLERANCE, gaps
    assert full[-1]["loss"] < 0.9 * full[0]["loss"]  # they learned, not just agreed
    # the first step is the same loss over the same 4 studies, whatever the split
    assert gaps[0] < 1e-3


def test_bf16_autocast_trains_on_cpu() -> None:
    config = load_config(TINY_V2, ["train.amp=bf16"])
    dtype = resolve_amp(config.train.amp, torch.device("cpu"))
    assert dtype == torch.bfloat16
    from radreport.model.data import phantom_report_texts
    from radreport.model.tokenizer import ReportTokenizer

    tokenizer = ReportTokenizer.train(phantom_report_texts(range(16)))
    model_config = model_config_for(config, tokenizer)
    data = PhantomReportDataset(range(4), tokenizer, model_config)
    batch = default_collate([data[i] for i in range(4)])
    losses = {}
    for amp in (None, dtype):
        torch.manual_seed(0)
        model = RadReportModel(model_config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        losses[amp], norm = train_step(model, batch, optimizer, scaler, 1.0, amp)
        assert torch.isfinite(torch.tensor(norm)) and norm > 0
    assert losses[dtype]["loss"] == pytest.approx(losses[None]["loss"], rel=0.02)
