"""MLflow experiment tracking: one MLflow run per training run folder.

``radreport train`` opens a run (``open_run``) and logs the resolved config (flattened, as
params, and ``config.toml`` as an artifact), one metric point per ``metrics.csv`` column and
epoch (step = epoch), and ``metrics.csv`` when it stops. ``radreport export`` adds the
exported model folder and its model card to the same run, and ``radreport evaluate --json``
and ``radreport gate`` add their JSON, when they are given the run (``find_run``).

Where runs go: ``$MLFLOW_TRACKING_URI`` (a tracking server, or any store URI MLflow takes)
when it is set; otherwise a local SQLite store inside the run folder
(``<run>/mlflow/mlflow.db``, artifacts in ``<run>/mlflow/artifacts``), so a run folder holds
its own record and nothing depends on the working directory. MLflow 3's own default is
``sqlite:///mlflow.db`` in the working directory; its file store (``./mlruns``) is
deprecated. A SQLite store keeps artifacts in ``artifacts/`` beside its database, never in
the working directory. The experiment is ``$MLFLOW_EXPERIMENT_NAME`` or "radreport".

The run's tracking URI and id are kept in ``<run>/mlflow_run.json`` (and copied into an
exported model folder), which is how later commands find the run. ``train.track = false``
turns all of it off.

No PHI: the run name is the run folder's name, params are the config (paths and numbers),
tags are only the run name, and artifacts are the config, the metrics, model folders and
aggregate evaluation JSON, none of which holds a patient or study identifier. MLflow's usage
telemetry is switched off unless the user has set ``MLFLOW_DISABLE_TELEMETRY`` themselves:
hospitals should not have training runs phone out.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
LOCAL_STORE = "mlflow"
DEFAULT_EXPERIMENT = "radreport"
MODEL_CARD = "MODEL_CARD.md"
PARAM_BATCH = 100  # MLflow's limit of params per log_batch call


@dataclass(frozen=True)
class RunRef:
    """Where a training run's MLflow record lives: store URI and run id."""

    tracking_uri: str
    run_id: str

    def save(self, folder: Path) -> Path:
        path = Path(folder) / RUN_FILE
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> RunRef | None:
        path = Path(folder) / RUN_FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        return cls(str(raw["tracking_uri"]), str(raw["run_id"]))


def tracking_uri(run_dir: Path) -> str:
    """``$MLFLOW_TRACKING_URI``, else the run folder's own SQLite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{(Path(run_dir) / LOCAL_STORE / 'mlflow.db').resolve()}"


def without_credentials(uri: str) -> str:
    """The URI with any ``user:password@`` removed, so it can be written to a file."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.001}}`` -> ``{"train.lr": "0.001"}``; lists as JSON."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        elif isinstance(value, str):
            flat[name] = value
        else:
            flat[name] = json.dumps(list(value) if isinstance(value, tuple) else value)
    return flat


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_location(uri: str) -> str | None:
    """For a SQLite store, ``artifacts/`` beside the database (MLflow would otherwise use
    ``./mlruns`` in the working directory); a server decides for itself (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()


def _experiment_id(client: Any, uri: str) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_location(uri)))


class Tracker:
    """An open MLflow run that a training run logs to (rank 0 only)."""

    def __init__(self, ref: RunRef) -> None:
        self.ref = ref
        self.client = _client(ref.tracking_uri)

    @property
    def run_id(self) -> str:
        return self.ref.run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        """Params not yet on the run (MLflow params are immutable: a resume keeps the first
        values; the re-logged ``config.toml`` artifact has the latest)."""
        from mlflow.entities import Param

        known = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in known]
        for i in range(0, len(new), PARAM_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + PARAM_BATCH])

    def log_metrics(self, row: Mapping[str, float], step: int) -> None:
        """One metrics.csv row; a failure is a warning: the CSV is the record of truth, and
        a tracking server that is down for a minute must not end a long training."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(v), stamp, step) for k, v in row.items()
                   if k != "epoch" and math.isfinite(float(v))]
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as err:  # any client or network error
            log.warning("MLflow: could not log epoch %d metrics: %s", step, err)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, completed: bool, metrics_file: Path) -> None:
        """Attach ``metrics.csv`` and close the run FINISHED (or FAILED); errors are
        warnings, so they never hide the error that ended a training."""
        try:
            if Path(metrics_file).is_file():
                self.log_artifact(metrics_file, "metrics")
            self.client.set_terminated(self.run_id, "FINISHED" if completed else "FAILED")
        except Exception as err:  # any client or network error
            log.warning("MLflow: could not close run %s: %s", self.run_id, err)


def open_run(run_dir: Path, config: Mapping[str, Any], config_file: Path,
             resume: bool) -> Tracker:
    """Start (or, on resume, reopen) the run folder's MLflow run and log its config."""
    run_dir = Path(run_dir)
    previous = RunRef.load(run_dir) if resume else None
    if previous is not None:
        tracker = Tracker(previous)
        tracker.client.update_run(previous.run_id, status="RUNNING")
    else:
        uri = tracking_uri(run_dir)
        client = _client(uri)
        experiment = _experiment_id(client, uri)
        run = client.create_run(experiment, run_name=run_dir.resolve().name)
        tracker = Tracker(RunRef(without_credentials(uri), run.info.run_id))
        tracker.ref.save(run_dir)
    tracker.log_params(flatten(config))
    tracker.log_artifact(config_file, "config")
    return tracker


def find_run(path: Path) -> RunRef | None:
    """The run recorded in ``path`` (a run folder or an exported model folder), or in the
    folder above it (a checkpoint in ``train.checkpoint_dir``)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder.parent):
        ref = RunRef.load(candidate)
        if ref is not None:
            return ref
    return None


def resolve_run(value: str) -> RunRef:
    """``--mlflow-run``: a folder holding ``mlflow_run.json``, or a run id on
    ``$MLFLOW_TRACKING_URI``."""
    if Path(value).exists():
        ref = find_run(Path(value))
        if ref is None:
            raise ValueError(f"{value} holds no {RUN_FILE}")
        return ref
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        raise ValueError(f"{value!r} is not a folder, and MLFLOW_TRACKING_URI is not set "
                         "to say which store holds that run id")
    return RunRef(uri, value)


def log_model_folder(checkpoint: Path, model_dir: Path) -> RunRef | None:
    """Attach an exported model folder (and its model card, when it has one) to the run
    that trained ``checkpoint``, and record the run in the folder. None if it has none."""
    ref = find_run(checkpoint)
    if ref is None:
        return None
    tracker = Tracker(ref)
    tracker.log_artifact(model_dir, "model")
    card = Path(model_dir) / MODEL_CARD
    if card.is_file():
        tracker.log_artifact(card, "model_card")
    ref.save(model_dir)
    return ref


def log_report(ref: RunRef, path: Path, artifact_path: str) -> None:
    """An evaluation or gate report (JSON, Markdown) as an artifact of ``ref``'s run."""
    Tracker(ref).log_artifact(path, artifact_path)


def attach_reports(run: str | None, model_dir: Path, paths: Sequence[Path],
                   artifact_path: str) -> RunRef | None:
    """Reports of ``radreport evaluate``/``gate`` to ``--mlflow-run`` (``resolve_run``), or to
    the run recorded in the model folder; None when neither names one."""
    ref = resolve_run(run) if run else find_run(model_dir)
    if ref is not None:
        for path in paths:
            log_report(ref, path, artifact_path)
    return ref


__all__ = ["RUN_FILE", "RunRef", "Tracker", "attach_reports", "find_run", "flatten",
           "log_model_folder", "log_report", "open_run", "resolve_run", "tracking_uri"]
