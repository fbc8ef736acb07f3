"""The real ``radreport`` command in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def radreport(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "radreport.cli", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def test_phantoms_then_contact_sheet(tmp_path: Path) -> None:
    out = tmp_path / "export"
    done = radreport("phantoms", "--n", "3", "--size", "256", "--seed", "5", "--out", str(out),
                     "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert "wrote 3 studies" in done.stdout
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["study_id"] for r in records] == [f"PHANTOM-S{s:07d}" for s in (5, 6, 7)]
    assert all((out / r["image"]).is_file() and (out / r["masks"]).is_file() for r in records)

    sheet = tmp_path / "sheet.png"
    done = radreport("contact-sheet", str(out), "--out", str(sheet))
    assert done.returncode == 0, done.stderr
    assert sheet.stat().st_size > 10_000


def test_bad_size_is_a_clear_usage_error(tmp_path: Path) -> None:
    done = radreport("phantoms", "--n", "1", "--size", "4096", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "--size" in done.stderr and "2048" in done.stderr


def test_bench_prints_figures() -> None:
    done = radreport("bench", "phantoms", "--count", "5", "--size", "256")
    assert done.returncode == 0, done.stderr
    assert "ms/study" in done.stdout and "5 phantoms at 256 px" in done.stdout


def test_train_then_export_tiny_model(tmp_path: Path) -> None:
    from radreport.cli import DEFAULT_TRAIN_CONFIG

    tiny = DEFAULT_TRAIN_CONFIG.with_name("tiny.toml")
    run = tmp_path / "run"
    done = radreport("train", "--config", str(tiny), "--out", str(run), "--set",
                     "train.epochs=1")
    assert done.returncode == 0, done.stderr
    assert (run / "best.pt").is_file() and (run / "metrics.csv").is_file()

    done = radreport("export", "--checkpoint", str(run / "best.pt"), "--out",
                     str(tmp_path / "onnx"), "--int8")
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    # mlflow_run.json: the training run's MLflow record, so evaluate and gate can join it.
    # A v1 (vit) folder gets the drift reference refitted and a card, no safety net fit.
    assert names == ["MODEL_CARD.md", "decoder_step.int8.onnx", "decoder_step.onnx",
                     "encoder.int8.onnx", "encoder.onnx", "intensity_reference.json",
                     "mlflow_run.json", "model.json", "tokenizer.json"]
    card = (tmp_path / "onnx" / "MODEL_CARD.md").read_text()
    assert "Not for clinical use" in card and "the safety net is fitted for v2" in card
    info = json.loads((tmp_path / "onnx" / "model.json").read_text())
    assert info["name"] == "radreport-phantom" and info["image_size"] == 64
    assert info["epoch"] == 1 and info["model_config"]["enc_depth"] == 1

    # The exported folder is a complete model: evaluate it with both baselines' rows.
    done = radreport("evaluate", "--model", str(tmp_path / "onnx"), "--variant", "int8",
                     "--ablation", str(tmp_path / "onnx"), "--limit", "6", "--resamples", "20",
                     "--workers", "1", "--json", str(tmp_path / "eval.json"))
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header[:2] == ["metric", "grounded"]
    for metric in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "Clinical F1 (micro)",
                   "Critical sensitivity", "Grounding IoU", "Pointing game"):
        assert metric in done.stdout
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["studies"] == 6
    assert list(result["rows"]) == ["grounded model (ours)", "ours, int8",
                                    "(b) no grounding/entropy loss",
                                    "(a) template from label head"]
    assert "Grounding IoU" not in result["rows"]["(a) template from label head"]
    # the ablation folder is the same model here, so its scores must equal ours exactly
    assert result["rows"]["(b) no grounding/entropy loss"] == result["rows"][
        "grounded model (ours)"]


def test_train_rejects_an_unknown_setting(tmp_path: Path) -> None:
    done = radreport("train", "--out", str(tmp_path), "--set", "train.epoch=1")
    assert done.returncode == 2
    assert "train.epoch" in done.stderr


def test_bench_serving_prints_every_path_side_by_side() -> None:
    done = radreport("bench", "serving", "--count", "2")
    assert done.returncode == 0, done.stderr
    assert "(a), (b): skipped" in done.stdout  # no checkpoint given
    rows = [line for line in done.stdout.splitlines() if "reports/s" in line]
    # (c), Triton at 1/4/8/16 clients with and without batching, and the BLS loop
    assert len(rows) == 1 + 8 + 1 and any("BLS" in row for row in rows)
    assert all("same tokens as (c): 100%" in row for row in rows)
