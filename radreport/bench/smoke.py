"""The smoke test of a deployed stack, from outside, through its published ports only.

Shared by ``radreport bench compose`` and ``radreport bench kube``: a phantom study by REST and
one by dcmtk ``storescu``, both grounded reports, one signed in the review API, Prometheus's
targets up, and every dashboard query answered by Prometheus (Grafana itself has no image
here). Nothing here knows how the stack was started.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydicom.uid import ExplicitVRLittleEndian

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "observability" / "grafana" / "dashboards"
REST_REPEATS = 5  # studies after the first, for a steady-state latency
# Grafana's interval variables, as Grafana would expand them for a short range.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}


@dataclass(frozen=True)
class Endpoints:
    gateway_url: str
    dicom_host: str
    dicom_port: int
    prometheus_url: str | None  # None: the stack brings no Prometheus of its own
    ae_title: str = "RADREPORT"


@dataclass
class SmokeResult:
    rest_seconds: float = 0.0  # the first study
    rest_p50_seconds: float = 0.0  # the next ones, one at a time
    dicom_seconds: float = 0.0  # includes the DICOM gateway's study-idle window
    signed_report_id: str = ""
    grounded_sentences: dict[str, int] = field(default_factory=dict)  # path -> with boxes
    targets_up: dict[str, str] = field(default_factory=dict)  # job/instance -> health
    dashboard_queries: int = 0
    dashboard_queries_with_data: int = 0


def _grounded(api: httpx.Client, report_id: str) -> int:
    """How many sentences carry a box; fails unless every sentence has its heatmap."""
    grounding = api.get(f"/api/v1/reports/{report_id}/grounding")
    grounding.raise_for_status()
    sentences = grounding.json()["sentences"]
    if not sentences or not all(s["heatmap"] for s in sentences):
        raise AssertionError(f"report {report_id}: sentences without heatmaps")
    boxed = sum(1 for s in sentences if s["boxes"])
    if not boxed:
        raise AssertionError(f"report {report_id}: no sentence points at a region")
    return boxed


def _wait_completed(api: httpx.Client, study_id: str, timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = api.get(f"/api/v1/studies/{study_id}/reports")
        if listed.status_code == 200 and listed.json():
            summary: dict[str, str] = listed.json()[0]
            if summary["status"] == "completed":
                return summary
            if summary["status"] == "failed":
                raise AssertionError(f"study by DICOM: {summary}")
        time.sleep(0.5)
    raise AssertionError(f"study {study_id} sent by DICOM: no completed report in {timeout_s} s")


def run_smoke(endpoints: Endpoints, token: Callable[[str], str], seed: int = 7,
              timeout_s: float = 300) -> SmokeResult:
    """The whole smoke test; raises AssertionError on the first thing that does not hold."""
    result = SmokeResult()
    # A machine client sees only the reports it asked for; the radiologist sees every report.
    with tempfile.TemporaryDirectory() as tmp, httpx.Client(
            base_url=endpoints.gateway_url, timeout=timeout_s,
            headers={"Authorization": f"Bearer {token('service')}"}) as api, httpx.Client(
            base_url=endpoints.gateway_url, timeout=timeout_s,
            headers={"Authorization": f"Bearer {token('radiologist')}"}) as reviewer:
        rest_study = write_study_dicom(generate_study(seed, 1024), Path(tmp) / "rest")
        report, result.rest_seconds = _reported(api, rest_study, f"SMOKE-REST-{seed}")
        result.grounded_sentences["rest"] = _grounded(api, report["report_id"])
        result.rest_p50_seconds = statistics.median(
            _reported(api, write_study_dicom(generate_study(seed + 100 + i, 1024),
                                             Path(tmp) / "more"), f"SMOKE-{seed}-{i}")[1]
            for i in range(REST_REPEATS))

        # Explicit VR Little Endian: what storescu proposes unless told otherwise.
        dicom_study = write_study_dicom(generate_study(seed + 1, 1024), Path(tmp) / "dicom",
                                        DicomOptions("DX", "MONOCHROME2", 12,
                                                     str(ExplicitVRLittleEndian)))
        study_uid = _study_uid(dicom_study)
        start = time.monotonic()
        subprocess.run(["storescu", "-aec", endpoints.ae_title, endpoints.dicom_host,
                        str(endpoints.dicom_port), str(dicom_study)], check=True,
                       capture_output=True, timeout=120)
        summary = _wait_completed(reviewer, study_uid, timeout_s)
        result.dicom_seconds = time.monotonic() - start
        result.grounded_sentences["dicom"] = _grounded(reviewer, summary["report_id"])

        signed = reviewer.post(f"/api/v1/reports/{report['report_id']}/sign",
                               json={"findings": report["findings"],
                                     "impression": report["impression"]})
        if signed.status_code != 200 or signed.json()["review_status"] != "signed":
            raise AssertionError(f"sign: {signed.status_code} {signed.text[:500]}")
        result.signed_report_id = report["report_id"]

    if endpoints.prometheus_url is None:
        return result
    with httpx.Client(base_url=endpoints.prometheus_url, timeout=30) as prometheus:
        result.targets_up = _targets_up(prometheus, timeout_s=90)
        result.dashboard_queries, result.dashboard_queries_with_data = _dashboards(prometheus)
    return result


def _reported(api: httpx.Client, study: Path, study_id: str) -> tuple[dict[str, Any], float]:
    """The study posted synchronously: its completed report, and the seconds it took."""
    start = time.monotonic()
    answer = api.post("/api/v1/reports/generate", data={"study_id": study_id},
                      files={"file": (study.name, study.read_bytes())})
    seconds = time.monotonic() - start
    if answer.status_code != 200 or answer.json()["status"] != "completed":
        raise AssertionError(f"REST study {study_id}: {answer.status_code} {answer.text[:500]}")
    return answer.json(), seconds


def _study_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _targets_up(prometheus: httpx.Client, timeout_s: float) -> dict[str, str]:
    """Each scrape target's health, once all are up (they are scraped every 15 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        active = prometheus.get("/api/v1/targets").json()["data"]["activeTargets"]
        health = {f"{t['labels']['job']}/{t['labels']['instance']}": t["health"] for t in active}
        if health and all(h == "up" for h in health.values()):
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus targets not all up: {health}")
        time.sleep(3)


def dashboard_queries() -> list[tuple[str, str]]:
    """(dashboard/panel title, PromQL) of every panel target of the provisioned dashboards."""
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                if re.search(r"\$\{?\w", expr):
                    raise AssertionError(f"{path.name}: unexpanded variable in {expr}")
                queries.append((f"{path.stem}/{panel.get('title', '?')}", expr))
    return queries


def _dashboards(prometheus: httpx.Client) -> tuple[int, int]:
    """Every dashboard query must be valid PromQL to this Prometheus; how many had data."""
    with_data = 0
    queries = dashboard_queries()
    for title, expr in queries:
        answer = prometheus.get("/api/v1/query", params={"query": expr})
        body = answer.json()
        if answer.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"dashboard panel {title}: {expr}: {body.get('error')}")
        with_data += bool(body["data"]["result"])
    return len(queries), with_data


def signed_report(endpoints: Endpoints, token: Callable[[str], str], report_id: str) -> str:
    """Who signed the report, as the gateway answers now; fails unless it is still signed."""
    answer = httpx.get(f"{endpoints.gateway_url}/api/v1/reports/{report_id}", timeout=30,
                       headers={"Authorization": f"Bearer {token('radiologist')}"})
    body = answer.json()
    if answer.status_code != 200 or body.get("review_status") != "signed":
        raise AssertionError(f"report {report_id} after the restart: {answer.status_code} "
                             f"{answer.text[:300]}")
    return str(body["signed_by"])
