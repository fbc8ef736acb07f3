"""PostgreSQL restarted under load (issue 16): the stack on a PostgreSQL store of its own
(``initdb`` in a temporary folder; the machine's own server is never touched). While the
store is down the API answers 503 with Retry-After; once it is back, every accepted report
completes exactly once (the re-driver queues what a stage lost while it could not write)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from radreport.bench.drills import PostgresCluster, postgres_drill
from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
from radreport.stack import LocalStack, StackConfig
from radreport.v1 import report_service_pb2 as service_pb
from radreport.v1 import report_service_pb2_grpc as service_grpc
from services.common.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    try:
        cluster = PostgresCluster.create()
    except RuntimeError as error:
        pytest.fail(str(error))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="module")
def stack(cluster: PostgresCluster,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig.on_free_ports(tmp_path_factory.mktemp("pg-stack"))
    config.extra_env = {"RADREPORT_DATABASE_URL": cluster.url,
                        "RADREPORT_RETRY_BACKOFF_S": "0.2",
                        "RADREPORT_GATEWAY_REDRIVE_PERIOD_S": "1",
                        "RADREPORT_GATEWAY_REDRIVE_IDLE_S": "3"}
    with LocalStack(config) as running:
        yield running


def test_postgres_restarted_under_load_loses_nothing(stack: LocalStack,
                                                     cluster: PostgresCluster,
                                                     tmp_path: Path) -> None:
    token = stack.config.token("service", "pg-ris")
    study = write_study_dicom(generate_study(51, 384), tmp_path, DicomOptions(
        "CR", "MONOCHROME1", 12, str(ExplicitVRLittleEndian)))
    api = httpx.Client(base_url=stack.config.gateway_url, timeout=120,
                       headers={"Authorization": f"Bearer {token}"})
    grpc_codes: list[grpc.StatusCode] = []

    def grpc_while_down() -> None:
        with grpc.insecure_channel(stack.config.grpc_target) as channel:
            try:
                service_grpc.ReportServiceStub(channel).Generate(service_pb.GenerateRequest(
                    study_id="PG-DOWN", image_data=study.read_bytes()),
                    metadata=(("authorization", f"Bearer {token}"),), timeout=60)
            except grpc.RpcError as error:
                grpc_codes.append(error.code())

    result = postgres_drill(stack, api, cluster, study, while_down=grpc_while_down)
    assert result.unfinished_at_fault, "every report finished before the crash: nothing tested"
    assert result.refused_while_down == 1 and result.created_while_down == 0, result
    assert grpc_codes == [grpc.StatusCode.UNAVAILABLE]
    assert result.held, result
    assert Store(cluster.url).list_for_study("PG-DOWN") == []
