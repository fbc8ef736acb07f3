"""``radreport train`` with MLFLOW_TRACKING_URI pointing at a real ``mlflow server`` on a
loopback port (artifacts proxied by the server), read back with MLflow's own client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from radreport.model.tracking import RunRef
from radreport.model.train import load_config, train
from radreport.serving.tritonserver import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = Path(__file__).parents[2] / "radreport" / "model" / "configs" / "tiny.toml"


@pytest.fixture()
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A tracking server with a SQLite backend; started and stopped here (about 10 s to
    start on the 2-core development machine)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start in 90 s"
            time.sleep(0.25)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker
        server.wait(timeout=30)
        log.close()


def test_training_logs_to_the_tracking_server(tmp_path: Path, mlflow_server: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    run_dir = tmp_path / "served-run"
    train(load_config(TINY, ['train.device="cpu"']), run_dir, progress=False)
    ref = RunRef.load(run_dir)
    assert ref is not None and ref.tracking_uri == mlflow_server
    assert not (run_dir / "mlflow").exists()  # nothing in the local store
    client = MlflowClient(mlflow_server)
    run = client.get_run(ref.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "served-run"
    assert run.data.params["train.epochs"] == "1"
    assert [m.step for m in client.get_metric_history(ref.run_id, "val_loss")] == [1]
    assert {a.path for a in client.list_artifacts(ref.run_id)} == {"config", "metrics"}
    assert (tmp_path / "server-artifacts").is_dir()  # stored by the server, not the client
