"""The whole stack as real processes: redis-server, tritonserver, one Celery worker per stage
and the gateway, on free loopback ports. A phantom DICOM study goes in through the API and
comes back as a grounded report, its FHIR bundle and its overlays; bad input gets 4xx."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from fhir.resources.R4B.bundle import Bundle
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian

from radreport.bench.drills import redis_drill, triton_drill
from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
from radreport.model.prompt import ClinicalContext
from radreport.model.report import ReportGenerator
from radreport.stack import LocalStack, StackConfig
from services.common.queue import DEAD_LETTER_KEY
from services.common.store import Store
from services.preprocess.imaging import load_image, prepare_for_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig.on_free_ports(tmp_path_factory.mktemp("stack"))
    config.extra_env = {"RADREPORT_GATEWAY_SYNC_WAIT_S": "90",
                        "RADREPORT_RETRY_BACKOFF_S": "0.2",
                        "RADREPORT_VISIBILITY_TIMEOUT_S": "20",
                        "RADREPORT_GATEWAY_REDRIVE_PERIOD_S": "1",
                        "RADREPORT_GATEWAY_REDRIVE_IDLE_S": "3",
                        "RADREPORT_DICOM_STUDY_IDLE_S": "1"}
    with LocalStack(config) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {stack.config.token('service', 'e2e-client')}"}
    with httpx.Client(base_url=stack.config.gateway_url, timeout=120, headers=headers) as client:
        yield client


@pytest.fixture(scope="module")
def phantom_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    study = generate_study(11, 512)
    options = DicomOptions("DX", "MONOCHROME1", 12, str(ExplicitVRLittleEndian))
    return write_study_dicom(study, tmp_path_factory.mktemp("dicom"), options)


def _reference_findings(path: Path, context: ClinicalContext | None = None,
                        ) -> tuple[str, str]:
    """What the shipped model drafts in-process from the same preprocessing (and context)."""
    generator = ReportGenerator()
    side = generator.info.image_size
    model_input, letterbox = prepare_for_model(load_image(path, model_side=side), side)
    (draft,) = generator.generate_prepared(model_input[None, None].astype(np.float32),
                                           [letterbox], contexts=[context])
    return draft.findings, draft.impression


def test_a_dicom_study_becomes_a_grounded_report(api: httpx.Client, phantom_dicom: Path,
                                                 stack: LocalStack) -> None:
    response = api.post("/api/v1/reports/generate", data={"study_id": "E2E-1"},
                        files={"file": ("study.dcm", phantom_dicom.read_bytes())})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["status"] == "completed"
    assert (report["findings"], report["impression"]) == _reference_findings(phantom_dicom)
    assert report["model_version"] == "radreport-phantom:0.4.0"
    assert report["processing_time_ms"] > 0
    assert 0.0 <= report["confidence"] <= 1.0
    assert isinstance(report["requires_radiologist_review"], bool)
    height, width = 512, 512
    for sentence in report["sentences"]:
        for x0, y0, x1, y1 in sentence["boxes"]:
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height

    again = api.get(f"/api/v1/reports/{report['report_id']}").json()
    assert again["findings"] == report["findings"]

    fhir = api.get(report["fhir_url"])
    assert fhir.status_code == 200
    assert fhir.headers["content-type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate(fhir.json())
    resources = [entry.resource for entry in bundle.entry]
    (diagnostic,) = [r for r in resources if r.__resource_type__ == "DiagnosticReport"]
    assert diagnostic.status == "preliminary"
    assert diagnostic.conclusion == report["impression"]

    grounding = api.get(report["grounding_map_url"]).json()
    assert [s["text"] for s in grounding["sentences"]] == [s["text"] for s in report["sentences"]]
    for sentence in report["sentences"]:
        overlay = api.get(sentence["overlay_url"])
        assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
        shown = Image.open(io.BytesIO(overlay.content)).size
        assert shown[0] == width and shown[1] > height  # the image, then its legend strip
        preview = api.get(sentence["overlay_url"], params={"size": "preview"})
        assert max(Image.open(io.BytesIO(preview.content)).size) <= 512

    listed = api.get("/api/v1/studies/E2E-1/reports").json()
    assert [r["report_id"] for r in listed] == [report["report_id"]]
    store = Store(f"sqlite:///{stack.config.data_dir / 'radreport.db'}")
    events = store.audit_events(report["report_id"])
    assert {e.action for e in events} == {"create", "read"}


def test_resubmitting_a_study_returns_its_report_unless_forced(api: httpx.Client,
                                                               phantom_dicom: Path) -> None:
    first = api.post("/api/v1/reports/generate", data={"study_id": "E2E-2"},
                     files={"file": ("a.dcm", phantom_dicom.read_bytes())}).json()
    second = api.post("/api/v1/reports/generate", data={"study_id": "E2E-2"},
                      files={"file": ("a.dcm", phantom_dicom.read_bytes())}).json()
    assert second["report_id"] == first["report_id"]
    forced = api.post("/api/v1/reports/generate", data={"study_id": "E2E-2", "force": "true"},
                      files={"file": ("a.dcm", phantom_dicom.read_bytes())}).json()
    assert forced["report_id"] != first["report_id"]
    assert forced["findings"] == first["findings"]
    listed = api.get("/api/v1/studies/E2E-2/reports").json()
    assert [r["report_id"] for r in listed] == [first["report_id"], forced["report_id"]]


def test_async_generation_answers_202_with_location(api: httpx.Client, stack: LocalStack,
                                                    phantom_dicom: Path) -> None:
    images = stack.config.data_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    shutil.copy(phantom_dicom, images / "async.dcm")
    response = api.post("/api/v1/reports/generate", headers={"Prefer": "respond-async"},
                        json={"study_id": "E2E-3", "image_path": "async.dcm",
                              "clinical_indication": "cough",
                              "patient_metadata": {"age": 65, "sex": "M"}})
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        report = api.get(location).json()
        if report["status"] == "completed":
            break
        time.sleep(0.5)
    assert report["status"] == "completed"
    # the request's clinical context reached the model's prompt ...
    context = ClinicalContext(indication="cough", age_years=65, sex="M")
    assert (report["findings"], report["impression"]) == _reference_findings(phantom_dicom,
                                                                             context)
    # ... and never a log
    for log in stack.logs.glob("*.log"):
        assert "cough" not in log.read_text(errors="replace"), log.name
    # the safety net, whatever the model: calibrated confidence and per-finding probability
    assert 0.0 <= report["calibrated_confidence"] <= 1.0
    assert isinstance(report["out_of_distribution"], bool)
    assert all(0.0 <= f["calibrated_probability"] <= 1.0
               for f in report["findings_structured"])


@pytest.mark.parametrize(("make_request", "status", "words"), [
    (lambda d: {"files": {"file": ("x.dcm", d[:400])}, "data": {"study_id": "BAD-1"}},
     422, "DICOM"),
    (lambda d: {"files": {"file": ("x.bin", b"not an image at all" * 20)},
                "data": {"study_id": "BAD-2"}}, 415, "not DICOM"),
    (lambda d: {"json": {"study_id": "BAD-3", "image_path": "../../etc/passwd"}}, 403,
     "outside"),
    (lambda d: {"content": b'{"study_id": "BAD-4", "image_path": ', "headers": {
        "content-type": "application/json"}}, 422, "JSON"),
    (lambda d: {"json": {"study_id": "BAD 5 ; drop", "image_path": "x.dcm"}}, 422,
     "study_id"),
])
def test_bad_input_gets_a_useful_4xx(api: httpx.Client, phantom_dicom: Path,
                                     make_request: object, status: int, words: str) -> None:
    response = api.post("/api/v1/reports/generate",
                        **make_request(phantom_dicom.read_bytes()))  # type: ignore[operator]
    assert response.status_code == status, response.text
    assert words.lower() in response.text.lower()
    assert "PHANTOM" not in response.text  # no patient name or id echoed back


def test_unknown_report_is_404(api: httpx.Client) -> None:
    for path in ("/api/v1/reports/RPT-" + "0" * 32, "/api/v1/reports/nonsense/fhir"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.json()["detail"] == "no report with this id"


def test_ready_and_metrics(api: httpx.Client) -> None:
    ready = api.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"redis": "ok", "triton": "ok", "store": "ok"}
    metrics = api.get("/metrics").text
    assert 'radreport_http_requests_total{method="POST",route="/api/v1/reports/generate"' in metrics
    assert "E2E-" not in metrics  # no study ids in labels


def test_a_killed_worker_loses_nothing_and_repeats_nothing(api: httpx.Client, stack: LocalStack,
                                                           phantom_dicom: Path) -> None:
    """SIGKILL the inference worker's pool process while it decodes a report: the task goes
    back to the queue, a new pool process finishes it, and every report is completed once."""
    worker = stack.processes["worker-inference"]
    store = Store(f"sqlite:///{stack.config.data_dir / 'radreport.db'}")
    report_ids = [api.post("/api/v1/reports/generate", headers={"Prefer": "respond-async"},
                           data={"study_id": f"E2E-KILL-{i}"},
                           files={"file": ("k.dcm", phantom_dicom.read_bytes())},
                           ).json()["report_id"] for i in range(6)]
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline:
        for report_id in report_ids:
            report = store.get(report_id)
            if report is None or report.status != "inferring":
                continue
            children = [int(pid) for pid in subprocess.run(
                ["pgrep", "-P", str(worker.pid)], text=True, capture_output=True).stdout.split()]
            for child in children:  # freeze, then make sure the task is still under way
                os.kill(child, signal.SIGSTOP)
            draft = stack.config.data_dir / "blobs" / "reports" / report_id / "draft.json"
            if store.get(report_id).status == "inferring" and not draft.exists():  # type: ignore[union-attr]
                for child in children:
                    os.kill(child, signal.SIGKILL)
                killed = report_id
                break
            for child in children:  # it had just finished: let it go on, try the next one
                os.kill(child, signal.SIGCONT)
    assert killed is not None, "never saw a report in the inference stage"
    reports = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        reports = {i: store.get(i) for i in report_ids}
        if all(r is not None and r.status in ("completed", "failed") for r in reports.values()):
            break
        time.sleep(0.5)
    for report_id, report in reports.items():
        assert report is not None and report.status == "completed", report_id
        history = [change.status for change in store.history(report_id)]
        assert history.count("completed") == 1
        assert report.result is not None and report.result["findings"]
    assert sum(r.attempts["infer"] for r in reports.values() if r) > len(report_ids), (
        "the killed task was not delivered again")
    assert redis.Redis.from_url(stack.config.redis_url).llen(DEAD_LETTER_KEY) == 0


def test_a_report_stored_but_never_queued_is_picked_up(stack: LocalStack,
                                                       phantom_dicom: Path) -> None:
    """As if the gateway died between storing a study and queueing it: the re-driver finds
    the report without a message and queues it, and it completes once."""
    from services.common.blobs import BlobStore

    store = Store(f"sqlite:///{stack.config.data_dir / 'radreport.db'}")
    report, created = store.create_or_get("E2E-STALLED", "radreport-phantom:0.4.0",
                                          {"requested_by": "e2e-client"})
    assert created
    BlobStore(stack.config.data_dir / "blobs").put_bytes(report.id, "input.dcm",
                                                         phantom_dicom.read_bytes())
    store.set_source(report.id, {"blob": "input.dcm", "format": "dicom"})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        stored = store.get(report.id)
        if stored is not None and stored.status == "completed":
            break
        time.sleep(0.5)
    assert stored is not None and stored.status == "completed"
    assert [c.status for c in store.history(report.id)].count("completed") == 1


def test_redis_killed_and_restarted_empty_loses_nothing_and_repeats_nothing(
        api: httpx.Client, stack: LocalStack, phantom_dicom: Path) -> None:
    """R8: Redis is killed under load and comes back without its data (every queued message
    gone). Meanwhile the API answers 503 with Retry-After and creates nothing, and a DICOM
    push still gets success. Once Redis is back, the re-driver queues every unfinished
    report again, each completes exactly once, and the pushed study is reported."""
    store = Store(f"sqlite:///{stack.config.data_dir / 'radreport.db'}")
    result = redis_drill(stack, api, store, phantom_dicom, timeout_s=120)
    assert result.unfinished_at_fault, "every report finished before Redis went: nothing tested"
    assert result.refused_while_down == 1 and result.created_while_down == 0, result
    assert result.dicom_push_accepted, result.notes  # durable on disk, reported once back
    assert result.held, result
    assert result.redriven >= result.unfinished_at_fault  # back through the re-driver


def test_triton_killed_and_restarted_loses_nothing(api: httpx.Client, stack: LocalStack,
                                                  phantom_dicom: Path) -> None:
    """R9: with Triton away, /readyz says so and reports wait at the inference stage without
    spending their attempts; once it is back, every one completes exactly once."""
    store = Store(f"sqlite:///{stack.config.data_dir / 'radreport.db'}")
    result = triton_drill(stack, api, store, phantom_dicom)
    assert not result.notes, result.notes  # /readyz answered 503 meanwhile
    assert result.waiting_while_down == result.accepted == 3, result
    assert result.held, result  # the gateway's own channel reconnects within ~1 s
