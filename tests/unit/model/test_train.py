"""The training loop on the tiny config: files, learning, exact resume, config, schedule."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from radreport.model.model import RadReportModel
from radreport.model.tokenizer import ReportTokenizer
from radreport.model.train import (
    METRIC_COLUMNS,
    TrainConfig,
    build_dataset,
    config_to_toml,
    load_config,
    lr_factor,
    model_config_for,
    train,
    train_step,
)

TINY = Path(__file__).parents[3] / "radreport" / "model" / "configs" / "tiny.toml"
DEFAULT = TINY.with_name("v2.toml")  # what `radreport train` runs without --config
V1 = TINY.with_name("v1.toml")


def tiny(*overrides: str) -> TrainConfig:
    return load_config(TINY, ["train.device=\"cpu\"", *overrides])


def read_metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_run_writes_every_artefact(tmp_path: Path) -> None:
    best = train(tiny(), tmp_path, progress=False)
    assert best == tmp_path / "best.pt"
    for name in ("tokenizer.json", "last.pt", "best.pt", "metrics.csv", "config.toml"):
        assert (tmp_path / name).is_file(), name
    rows = read_metrics(tmp_path)
    assert len(rows) == 1 and tuple(rows[0]) == METRIC_COLUMNS
    assert all(math.isfinite(float(v)) for v in rows[0].values())
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "epoch", "step", "rng",
            "train_config"} <= set(ckpt)
    model = RadReportModel.from_checkpoint(ckpt)
    assert model.config.vocab_size == ReportTokenizer.load(tmp_path / "tokenizer.json").vocab_size
    assert load_config(tmp_path / "config.toml") == tiny()


def test_training_loss_falls(tmp_path: Path) -> None:
    train(tiny("train.epochs=12"), tmp_path, progress=False)
    rows = read_metrics(tmp_path)
    first, last = (float(rows[i]["train_loss"]) for i in (0, -1))
    assert len(rows) == 12
    assert last < 0.8 * first, (first, last)
    assert float(rows[-1]["train_lm"]) < 0.8 * float(rows[0]["train_lm"])


def test_resume_continues_exactly(tmp_path: Path) -> None:
    config = tiny("train.epochs=2")
    train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "split", progress=False, stop_after=1)
    assert len(read_metrics(tmp_path / "split")) == 1
    train(config, tmp_path / "split", resume=True, progress=False)
    straight = params(tmp_path / "straight" / "last.pt")
    split = params(tmp_path / "split" / "last.pt")
    assert straight.keys() == split.keys()
    for name, value in straight.items():
        torch.testing.assert_close(split[name], value, rtol=0, atol=1e-6, msg=name)
    assert [r["epoch"] for r in read_metrics(tmp_path / "split")] == ["1", "2"]


def test_overrides_parse_and_type_check() -> None:
    config = tiny("train.epochs=3", "train.lr=1", "data.train_seeds=[10, 5]",
                  "model.grounding_layers=[0]", "train.amp=off")
    assert config.train.epochs == 3 and config.train.lr == 1.0
    assert config.data.train_seeds == (10, 5)
    assert config.model["grounding_layers"] == (0,) and config.train.amp == "off"
    with pytest.raises(ValueError, match=r"train\.epoch"):
        tiny("train.epoch=3")
    with pytest.raises(ValueError, match=r"model\.width"):
        tiny("model.width=3")
    with pytest.raises(TypeError, match=r"train\.batch_size"):
        tiny("train.batch_size=1.5")
    with pytest.raises(ValueError, match=r"section\.key=value"):
        tiny("epochs=3")
    with pytest.raises(ValueError, match="amp"):
        tiny("train.amp=fp8")


@pytest.mark.parametrize("path", [DEFAULT, V1, TINY.with_name("v2-finetune.toml")])
def test_shipped_configs_load_and_round_trip(path: Path, tmp_path: Path) -> None:
    config = load_config(path)
    assert config.train.grad_clip == 1.0 and config.data.study_size == 512
    (tmp_path / "c.toml").write_text(config_to_toml(config))
    assert load_config(tmp_path / "c.toml") == config


def test_schedule_warms_up_then_decays_to_min() -> None:
    warmup, total, floor = 10, 110, 0.1
    factors = [lr_factor(s, warmup, total, floor) for s in range(total + 1)]
    rises = factors[:warmup]
    assert rises == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    decay = factors[warmup:]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert factors[warmup + 50] == pytest.approx(floor + (1 - floor) * 0.5)
    assert factors[total] == pytest.approx(floor)
    assert lr_factor(total + 50, warmup, total, floor) == pytest.approx(floor)


def test_gradients_are_clipped(tokenizer: ReportTokenizer, tmp_path: Path) -> None:
    """Plain SGD with lr 1 moves the weights by exactly the clipped gradient."""
    clip = 0.05
    config = tiny("data.cache=false")
    model_config = model_config_for(config, tokenizer)
    dataset = build_dataset(config.data.train_seeds, tokenizer, model_config, config,
                            tmp_path, progress=False, desc="", train=True)
    batch = {k: v.float() if v.dtype == torch.float16 else v
             for k, v in default_collate([dataset[i] for i in range(4)]).items()}
    torch.manual_seed(0)
    model = RadReportModel(model_config).train()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    _, norm = train_step(model, batch, optimizer, scaler, clip, None)
    moved = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters(),
                                                                   strict=True)])
    assert norm > 2 * clip  # the raw gradient really was clipped
    assert moved.norm().item() == pytest.approx(clip, rel=1e-4)
