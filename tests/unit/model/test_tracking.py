"""MLflow tracking of a tiny training run, read back with MLflow's own client."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from radreport.model.tracking import (
    RUN_FILE,
    RunRef,
    find_run,
    flatten,
    log_model_folder,
    log_report,
    resolve_run,
    without_credentials,
)
from radreport.model.train import TrainConfig, load_config, train

TINY = Path(__file__).parents[3] / "radreport" / "model" / "configs" / "tiny.toml"


def tiny(*overrides: str) -> TrainConfig:
    return load_config(TINY, ['train.device="cpu"', *overrides])


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    """Every file under ``path`` of the run's artifacts, recursively."""
    found: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return found


@pytest.fixture()
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def test_training_is_recorded_in_the_run_folder(tmp_path: Path, no_server: None) -> None:
    run_dir = tmp_path / "tiny-run"
    train(tiny("train.epochs=2"), run_dir, progress=False)
    ref = RunRef.load(run_dir)
    assert ref is not None
    assert ref.tracking_uri == f"sqlite:///{(run_dir / 'mlflow' / 'mlflow.db').resolve()}"
    client = MlflowClient(ref.tracking_uri)
    run = client.get_run(ref.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny-run"
    assert client.get_experiment(run.info.experiment_id).name == "radreport"
    # params: the resolved config, flattened
    params = run.data.params
    assert params == flatten(tiny("train.epochs=2").to_dict())
    assert params["train.epochs"] == "2" and params["model.image_size"] == "64"
    assert params["data.train_seeds"] == "[0, 8]" and params["data.dataset"] == "phantoms"
    # per-epoch metrics: every metrics.csv value, step = epoch
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    for key in ("train_loss", "val_loss", "lr", "seconds"):
        history = client.get_metric_history(ref.run_id, key)
        assert [m.step for m in history] == [1, 2], key
        assert [m.value for m in history] == pytest.approx([float(r[key]) for r in rows])
    # artifacts: the resolved config and the metrics
    assert artifact_paths(client, ref.run_id) == {"config/config.toml", "metrics/metrics.csv"}
    local = Path(client.download_artifacts(ref.run_id, "config/config.toml", str(tmp_path)))
    assert local.read_text() == (run_dir / "config.toml").read_text()
    assert str(run_dir.resolve()) in run.info.artifact_uri  # stays inside the run folder


def test_resume_continues_the_same_run(tmp_path: Path, no_server: None) -> None:
    config = tiny("train.epochs=2")
    train(config, tmp_path, progress=False, stop_after=1)
    first = RunRef.load(tmp_path)
    train(config, tmp_path, resume=True, progress=False)
    assert RunRef.load(tmp_path) == first and first is not None
    client = MlflowClient(first.tracking_uri)
    assert [m.step for m in client.get_metric_history(first.run_id, "train_loss")] == [1, 2]
    assert len(client.search_runs([client.get_run(first.run_id).info.experiment_id])) == 1


def test_export_and_reports_join_the_run(tmp_path: Path, no_server: None) -> None:
    """The CLI's export and gate hooks: the model folder, its card, a JSON report."""
    run_dir = tmp_path / "run"
    train(tiny(), run_dir, progress=False)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.json").write_text("{}")
    (model_dir / "MODEL_CARD.md").write_text("# card\n")
    ref = log_model_folder(run_dir / "best.pt", model_dir)
    assert ref == RunRef.load(run_dir) and find_run(model_dir) == ref
    assert ref is not None
    report = tmp_path / "gate.json"
    report.write_text(json.dumps({"passed": False}))
    log_report(resolve_run(str(model_dir)), report, "gate")
    client = MlflowClient(ref.tracking_uri)
    assert artifact_paths(client, ref.run_id) >= {
        "model/model.json", "model/MODEL_CARD.md", "model_card/MODEL_CARD.md", "gate/gate.json"}


def test_tracking_can_be_switched_off(tmp_path: Path, no_server: None) -> None:
    train(tiny("train.track=false"), tmp_path, progress=False)
    assert not (tmp_path / RUN_FILE).exists() and not (tmp_path / "mlflow").exists()
    assert log_model_folder(tmp_path / "best.pt", tmp_path) is None


def test_environment_chooses_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second store named by MLFLOW_TRACKING_URI (as a server's URL would be) receives
    the run; the tracking server itself is tested in tests/integration."""
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hospital-a")
    train(tiny(), tmp_path / "run", progress=False)
    ref = RunRef.load(tmp_path / "run")
    assert ref is not None and ref.tracking_uri == shared
    assert not (tmp_path / "run" / "mlflow").exists()
    run = MlflowClient(shared).get_run(ref.run_id)
    assert MlflowClient(shared).get_experiment(run.info.experiment_id).name == "hospital-a"
    assert run.data.metrics["train_loss"] > 0
    assert run.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())
    assert list((tmp_path / "cwd").iterdir()) == []  # no ./mlruns, no ./mlflow.db


def test_helpers() -> None:
    assert flatten({"a": {"b": (1, 2), "c": True, "d": "x"}}) == {
        "a.b": "[1, 2]", "a.c": "true", "a.d": "x"}
    assert without_credentials("https://u:secret@mlflow.example:5000/x") == (
        "https://mlflow.example:5000/x")
    assert without_credentials("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI"):
        resolve_run("no-such-folder-or-run")
