"""A real Prometheus (Debian's) scrapes the running stack: every dashboard panel's query
returns data, the alert rules and config pass promtool, and no label carries a study id."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import yaml
from pydicom.uid import ExplicitVRLittleEndian

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
from radreport.serving.tritonserver import PROJECT_ROOT, free_port
from radreport.stack import LocalStack, StackConfig
from radreport.v1 import report_service_pb2 as service_pb
from radreport.v1 import report_service_pb2_grpc as service_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]
OBSERVABILITY = PROJECT_ROOT / "deploy" / "observability"
ALERTS = OBSERVABILITY / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((OBSERVABILITY / "grafana" / "dashboards").glob("*.json"))
WINDOW = "30s"  # stands in for Grafana's $__rate_interval at a 1 s scrape interval


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make setup` (Debian package prometheus)")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig.on_free_ports(tmp_path_factory.mktemp("observed-stack"))
    with LocalStack(config) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus with our rule file, scraping the stack's real ports every second."""
    root = tmp_path_factory.mktemp("prometheus")
    config = stack.config
    workers = [f"127.0.0.1:{p}" for p in config.worker_metrics_ports.values()]
    settings = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "gateway", "static_configs": [
                {"targets": [f"127.0.0.1:{config.gateway_port}"]}]},
            {"job_name": "dicom", "static_configs": [
                {"targets": [f"127.0.0.1:{config.dicom_metrics_port}"]}]},
            {"job_name": "workers", "static_configs": [{"targets": workers}]},
            {"job_name": "triton", "static_configs": [
                {"targets": [f"127.0.0.1:{config.triton_metrics_port}"]}]},
        ]}
    (root / "prometheus.yml").write_text(yaml.safe_dump(settings))
    checked = subprocess.run([_tool("promtool"), "check", "config", str(root / "prometheus.yml")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    port = free_port()
    process = subprocess.Popen(
        [_tool("prometheus"), f"--config.file={root / 'prometheus.yml'}",
         f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=(root / "prometheus.log").open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                targets = httpx.get(f"{url}/api/v1/targets", timeout=2).json()
                active = targets["data"]["activeTargets"]
                if len(active) == 7 and all(t["health"] == "up" for t in active):
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus targets not all up: {(root / 'prometheus.log').read_text()}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def traffic(stack: LocalStack, prometheus: str, tmp_path_factory: pytest.TempPathFactory,
            ) -> None:
    """Studies through the API and one refused upload, while Prometheus watches."""
    folder = tmp_path_factory.mktemp("studies")
    headers = {"Authorization": f"Bearer {stack.config.token('service', 'obs-client')}"}
    with httpx.Client(base_url=stack.config.gateway_url, timeout=120, headers=headers) as api:
        for seed in range(3):
            path = write_study_dicom(generate_study(200 + seed, 384), folder,
                                     DicomOptions("DX", "MONOCHROME2", 12,
                                                  str(ExplicitVRLittleEndian)))
            response = api.post("/api/v1/reports/generate", data={"study_id": f"OBS-{seed}"},
                                files={"file": ("s.dcm", path.read_bytes())})
            assert response.status_code == 200, response.text
        api.post("/api/v1/reports/generate", data={"study_id": "OBS-BAD"},
                 files={"file": ("x.bin", b"not an image" * 20)})
    with grpc.insecure_channel(stack.config.grpc_target) as channel:  # one streamed study
        events = list(service_grpc.ReportServiceStub(channel).GenerateStream(
            service_pb.GenerateRequest(study_id="OBS-STREAM", image_data=path.read_bytes(),
                                       force=True),
            metadata=(("authorization", headers["Authorization"]),), timeout=120))
        assert events[-1].HasField("report")
    time.sleep(4)  # a few more scrapes after the last report


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return list(answer["data"]["result"])


def _panel_queries() -> list[tuple[str, str, str]]:
    queries = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                queries.append((path.stem, panel["title"],
                                target["expr"].replace("$__rate_interval", WINDOW)))
    return queries


def test_the_dashboards_exist() -> None:
    assert {p.stem for p in DASHBOARDS} == {"operations", "clinical-quality"}


@pytest.mark.parametrize(("dashboard", "title", "expr"), _panel_queries(),
                         ids=[f"{d}:{t}:{i}" for i, (d, t, _) in enumerate(_panel_queries())])
def test_every_panel_query_returns_data(prometheus: str, traffic: None, dashboard: str,
                                        title: str, expr: str) -> None:
    assert _query(prometheus, expr), f"{dashboard} / {title}: no data for {expr}"


def test_alert_rules_pass_promtool_and_load(prometheus: str) -> None:
    checked = subprocess.run([_tool("promtool"), "check", "rules", str(ALERTS)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"RadreportReportLatencyP99High", "RadreportLabelTextDisagreementHigh",
            "RadreportInputDrift", "RadreportAttentionEntropyRising"} <= loaded
    assert all(rule["health"] == "ok" for group in groups for rule in group["rules"])


def test_no_label_carries_a_study_or_report_id(prometheus: str, traffic: None) -> None:
    series = httpx.get(f"{prometheus}/api/v1/series", timeout=10,
                       params={"match[]": '{__name__=~"radreport_.+"}'}).json()["data"]
    assert series
    for labels in series:
        for value in labels.values():
            assert "OBS-" not in value and "RPT-" not in value and "2.25." not in value, labels
