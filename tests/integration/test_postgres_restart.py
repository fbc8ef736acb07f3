"""PostgreSQL restarted under load (issue 16): the stack on a PostgreSQL store of its own
(``initdb`` in a temporary folder; the machine's own server is never touched). While the
store is down the API answers 503 with Retry-After; once it is back, every accepted report
completes exactly once (the re-driver queues what a stage lost while it could not write)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from radreport.bench.load import wait_finished
from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
from radreport.serving.tritonserver import free_port
from radreport.stack import LocalStack, StackConfig
from radreport.v1 import report_service_pb2 as service_pb
from radreport.v1 import report_service_pb2_grpc as service_grpc
from services.common.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Cluster:
    bin_dir: Path
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://radreport@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-l",
                  str(self.data_dir.parent / "postgres.log"), "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 "
                  f"-k {self.data_dir.parent}", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: run `make setup` (Debian postgresql)")
    root = Path(tempfile.mkdtemp(prefix="radreport-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = Cluster(Path(found[-1]).parent, root / "data", free_port())
    cluster._run("initdb", "-D", str(cluster.data_dir), "-U", "radreport", "--auth=trust")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig.on_free_ports(tmp_path_factory.mktemp("pg-stack"))
    config.extra_env = {"RADREPORT_DATABASE_URL": cluster.url,
                        "RADREPORT_RETRY_BACKOFF_S": "0.2",
                        "RADREPORT_GATEWAY_REDRIVE_PERIOD_S": "1",
                        "RADREPORT_GATEWAY_REDRIVE_IDLE_S": "3"}
    with LocalStack(config) as running:
        yield running


def test_postgres_restarted_under_load_loses_nothing(stack: LocalStack, cluster: Cluster,
                                                     tmp_path: Path) -> None:
    token = stack.config.token("service", "pg-ris")
    study = write_study_dicom(generate_study(51, 384), tmp_path, DicomOptions(
        "CR", "MONOCHROME1", 12, str(ExplicitVRLittleEndian)))
    api = httpx.Client(base_url=stack.config.gateway_url, timeout=120,
                       headers={"Authorization": f"Bearer {token}"})
    report_ids = [api.post("/api/v1/reports/generate", headers={"Prefer": "respond-async"},
                           data={"study_id": f"PG-{i}"},
                           files={"file": ("s.dcm", study.read_bytes())}).json()["report_id"]
                  for i in range(5)]
    store = Store(cluster.url)
    unfinished = [i for i in report_ids if store.get(i).status != "completed"]  # type: ignore[union-attr]
    assert unfinished, "every report finished before the crash: nothing was tested"
    cluster.stop("immediate")  # a crash, not a shutdown
    try:
        down = api.post("/api/v1/reports/generate", data={"study_id": "PG-DOWN"},
                        files={"file": ("s.dcm", study.read_bytes())})
        assert down.status_code == 503, down.text
        assert int(down.headers["Retry-After"]) > 0
        with grpc.insecure_channel(stack.config.grpc_target) as channel:
            reports = service_grpc.ReportServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                reports.Generate(service_pb.GenerateRequest(
                    study_id="PG-DOWN", image_data=study.read_bytes()),
                    metadata=(("authorization", f"Bearer {token}"),), timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        time.sleep(3)
    finally:
        cluster.start()

    reports = wait_finished(store, report_ids, 180)
    for report_id, report in reports.items():
        assert report is not None and report.status == "completed", (report_id, report and
                                                                     report.status_reason)
        assert [c.status for c in store.history(report_id)].count("completed") == 1
    assert store.list_for_study("PG-DOWN") == []
    assert api.get("/readyz").status_code == 200
