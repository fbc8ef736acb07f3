"""R14: no patient data outside the images and the reports made for the PACS
(radreport.bench.phi_scan plants canaries in every identifying attribute, sends them every way
the stack takes studies, and scans every log, /metrics endpoint and Redis key and value)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from radreport.bench.phi_scan import plant_and_scan
from radreport.stack import LocalStack, StackConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig.on_free_ports(tmp_path_factory.mktemp("phi"))
    config.extra_env = {"RADREPORT_DICOM_STUDY_IDLE_S": "1",
                        "RADREPORT_GATEWAY_SYNC_WAIT_S": "90"}
    with LocalStack(config) as running:
        yield running


def test_no_canary_in_logs_metrics_or_redis(stack: LocalStack, tmp_path: Path) -> None:
    scan = plant_and_scan(stack, tmp_path)
    assert scan.pushed_reported
    assert scan.scanned_bytes > 10_000  # there was much to scan
    assert not scan.leaks, scan.leaks
