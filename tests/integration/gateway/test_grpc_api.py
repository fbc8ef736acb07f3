"""The gRPC API against the running stack, with a real gRPC client (grpcio).

Generation unary and streamed (sentences as the model decodes them, equal to the final
report's), bad input and unknown studies, authentication and roles, audit, health, reflection
and the message-size limit.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydicom.uid import ExplicitVRLittleEndian

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
from radreport.stack import LocalStack, StackConfig
from radreport.v1 import report_pb2 as pb
from radreport.v1 import report_service_pb2 as service_pb
from radreport.v1 import report_service_pb2_grpc as service_grpc
from services.common.auth import AuthSettings, Role, create_api_key

pytestmark = pytest.mark.integration
Stage = service_pb.StatusUpdate.Stage
MAX_MESSAGE = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig.on_free_ports(tmp_path_factory.mktemp("grpc"))
    config.extra_env["RADREPORT_GATEWAY_GRPC_MAX_MESSAGE_BYTES"] = str(MAX_MESSAGE)
    with LocalStack(config) as running:
        yield running


@pytest.fixture(scope="module")
def channel(stack: LocalStack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.config.grpc_target) as opened:
        grpc.channel_ready_future(opened).result(timeout=30)
        yield opened


@pytest.fixture(scope="module")
def reports(channel: grpc.Channel) -> service_grpc.ReportServiceStub:
    return service_grpc.ReportServiceStub(channel)


def bearer(stack: LocalStack, role: str = "radiologist", subject: str | None = None,
           ) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {stack.config.token(role, subject)}"),)


def dicom_bytes(folder: Path, seed: int) -> bytes:
    path = write_study_dicom(generate_study(seed, 384), folder / str(seed),
                             DicomOptions("CR", "MONOCHROME1", 12, str(ExplicitVRLittleEndian)))
    return path.read_bytes()


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code()  # type: ignore[no-any-return]


def rest_report(stack: LocalStack, report_id: str) -> dict:  # type: ignore[type-arg]
    response = httpx.get(f"{stack.config.gateway_url}/api/v1/reports/{report_id}",
                         headers=dict(bearer(stack)), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_unary_generate_answers_what_rest_answers(
        stack: LocalStack, reports: service_grpc.ReportServiceStub, tmp_path: Path) -> None:
    request = service_pb.GenerateRequest(study_id="GRPC-UNARY", image_data=dicom_bytes(
        tmp_path, 3_100_001), clinical_indication="cough",
        patient_metadata=service_pb.PatientMetadata(age=63, sex="F"))
    report, call = reports.Generate.with_call(request, metadata=bearer(stack), timeout=120)
    assert report.status == pb.REPORT_STATUS_COMPLETED
    assert dict(call.trailing_metadata())["radreport-report-id"] == report.report_id
    rest = rest_report(stack, report.report_id)
    assert (report.study_id, report.findings, report.impression, report.model_version) == (
        rest["study_id"], rest["findings"], rest["impression"], rest["model_version"])
    assert [(s.index, s.text, [(b.x0, b.y0, b.x1, b.y1) for b in s.boxes], list(s.labels))
            for s in report.sentences] == [
        (s["index"], s["text"], [tuple(b) for b in s["boxes"]], s["labels"])
        for s in rest["sentences"]]
    assert [f.finding for f in report.findings_structured] == [
        f["finding"] for f in rest["findings_structured"]]
    assert report.confidence == pytest.approx(rest["confidence"])
    # each sentence's grounding map: one byte per cell, the REST map up to quantization
    maps = httpx.get(f"{stack.config.gateway_url}/api/v1/reports/{report.report_id}/grounding",
                     headers=dict(bearer(stack)), timeout=30).json()
    for sentence, full in zip(report.sentences, maps["sentences"], strict=True):
        grounding = sentence.grounding
        cells = np.frombuffer(grounding.cells, dtype=np.uint8).reshape(grounding.grid,
                                                                        grounding.grid)
        expected = np.asarray(full["heatmap"])
        np.testing.assert_allclose(cells / 255 * grounding.max_weight, expected,  # REST: 3
                                   atol=grounding.max_weight / 255 / 2 + 0.0005)  # digits
        assert grounding.letterbox.original_height == maps["letterbox"]["original_shape"][0]
    # asking again finds the same report; GetReport and ListStudyReports agree
    again = reports.Generate(request, metadata=bearer(stack), timeout=120)
    assert again.report_id == report.report_id
    read = reports.GetReport(service_pb.GetReportRequest(report_id=report.report_id),
                             metadata=bearer(stack))
    for message in (read, report):  # the grounding stage, after completion, adds its timing
        message.ClearField("stage_timings_ms")
        message.ClearField("updated_at")
    assert read == report
    listed = reports.ListStudyReports(service_pb.ListStudyReportsRequest(
        study_id="GRPC-UNARY"), metadata=bearer(stack))
    assert [r.report_id for r in listed.reports] == [report.report_id]


def test_sentences_stream_as_they_are_decoded_and_equal_the_report(
        stack: LocalStack, reports: service_grpc.ReportServiceStub, tmp_path: Path) -> None:
    request = service_pb.GenerateRequest(study_id="GRPC-STREAM",
                                         image_data=dicom_bytes(tmp_path, 3_100_002))
    received: list[tuple[float, service_pb.GenerateEvent]] = []
    for event in reports.GenerateStream(request, metadata=bearer(stack), timeout=120):
        received.append((time.time(), event))
    events = [e for _, e in received]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "report" and kinds.count("report") == 1
    assert len({e.report_id for e in events}) == 1
    stages = [e.status.stage for e in events if e.HasField("status")]
    assert stages == [Stage.STAGE_QUEUED, Stage.STAGE_PREPROCESSING, Stage.STAGE_PREPROCESSED,
                      Stage.STAGE_INFERRING, Stage.STAGE_FORMATTING]
    assert not events[0].status.existing_report
    # sentences come between "inferring" and "formatting", in order, each once
    first_sentence = kinds.index("sentence")
    assert kinds.index("status", first_sentence) > kinds.index("sentence")
    assert kinds[first_sentence - 1] == "status"
    assert events[first_sentence - 1].status.stage == Stage.STAGE_INFERRING
    streamed = [e.sentence for e in events if e.HasField("sentence")]
    report = events[-1].report
    assert report.status == pb.REPORT_STATUS_COMPLETED
    assert len(streamed) == len(report.sentences) >= 2
    for live, final in zip(streamed, report.sentences, strict=True):
        assert (live.index, live.section, live.text, list(live.boxes), list(live.labels)) == (
            final.index, final.section, final.text, list(final.boxes), list(final.labels))
        assert live.grounding.grid == final.grounding.grid == 128  # 0.4.0: fine head maps
        cells = np.frombuffer(live.grounding.cells, np.uint8).astype(int)
        assert np.abs(cells - np.frombuffer(final.grounding.cells, np.uint8)).max() <= 1
    # real streaming, not a replay: each sentence is stamped when the model decoded it, one
    # after another, and the first reached this client before the report was complete
    decoded = [e.time.ToNanoseconds() / 1e9 for e in events if e.HasField("sentence")]
    assert decoded == sorted(decoded) and decoded[0] < decoded[-1]
    completed = events[-1].time.ToNanoseconds() / 1e9
    first_arrival = received[first_sentence][0]
    assert decoded[-1] < completed
    assert first_arrival < completed, (first_arrival, completed)
    assert received[-1][0] - first_arrival > 0.01  # "measurably": tens of ms here
    print(f"first sentence {1000 * (completed - first_arrival):.0f} ms before completion; "
          f"decoding spanned {1000 * (decoded[-1] - decoded[0]):.0f} ms")

    # the same study again: the stored report, its sentences at once, then the report
    replay = list(reports.GenerateStream(request, metadata=bearer(stack), timeout=60))
    assert replay[0].status.existing_report and replay[0].report_id == report.report_id
    assert [e.sentence.text for e in replay if e.HasField("sentence")] == [
        s.text for s in report.sentences]
    for message in (replay[-1].report, report):
        message.ClearField("stage_timings_ms")
        message.ClearField("updated_at")
    assert replay[-1].report == report


def test_a_stored_study_is_reported_again_by_reference(
        stack: LocalStack, reports: service_grpc.ReportServiceStub, tmp_path: Path) -> None:
    first = reports.Generate(service_pb.GenerateRequest(
        study_id="GRPC-REF", image_data=dicom_bytes(tmp_path, 3_100_003)),
        metadata=bearer(stack), timeout=120)
    again = reports.Generate(service_pb.GenerateRequest(study_reference="GRPC-REF", force=True),
                             metadata=bearer(stack), timeout=120)
    assert again.report_id != first.report_id and again.study_id == "GRPC-REF"
    assert again.findings == first.findings
    listed = reports.ListStudyReports(service_pb.ListStudyReportsRequest(study_id="GRPC-REF"),
                                      metadata=bearer(stack))
    assert [r.report_id for r in listed.reports] == [first.report_id, again.report_id]


def test_bad_input_and_unknown_things_get_their_status_codes(
        stack: LocalStack, reports: service_grpc.ReportServiceStub, tmp_path: Path) -> None:
    md = bearer(stack)
    whole = dicom_bytes(tmp_path, 3_100_004)

    def generate(**fields: object) -> service_pb.GenerateRequest:
        return service_pb.GenerateRequest(**fields)  # type: ignore[arg-type]

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: reports.Generate(generate(study_id="G-1", image_data=b"noise" * 99),
                                            metadata=md)) == invalid
    assert code_of(lambda: reports.Generate(generate(study_id="G-2"), metadata=md)) == invalid
    assert code_of(lambda: reports.Generate(generate(study_id="bad id!", image_data=whole),
                                            metadata=md)) == invalid
    # a DICOM whose header is fine but whose pixels are cut off: accepted, then refused by
    # preprocessing; the unary call says so, the stream ends with the failed report
    corrupt = generate(study_id="G-CORRUPT", image_data=whole[: len(whole) // 2])
    with pytest.raises(grpc.RpcError) as caught:
        reports.Generate(corrupt, metadata=md, timeout=120)
    assert caught.value.code() == invalid
    assert "pixel" in (caught.value.details() or "")
    stream = reports.GenerateStream(corrupt, metadata=md, timeout=60)
    events = []
    with pytest.raises(grpc.RpcError) as caught:
        events.extend(stream)
    assert caught.value.code() == invalid
    assert events[-1].report.status == pb.REPORT_STATUS_FAILED
    assert events[-1].report.status_reason
    not_found = grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: reports.Generate(generate(study_reference="NO-SUCH-STUDY"),
                                            metadata=md)) == not_found
    assert code_of(lambda: reports.GetReport(service_pb.GetReportRequest(
        report_id="RPT-000000000000"), metadata=md)) == not_found
    assert code_of(lambda: reports.ListStudyReports(service_pb.ListStudyReportsRequest(
        study_id="NO-SUCH-STUDY"), metadata=md)) == not_found
    assert code_of(lambda: reports.Generate(generate(study_id="G-3", image_path="missing.dcm"),
                                            metadata=md)) == not_found
    assert code_of(lambda: reports.Generate(generate(study_id="G-4", image_path="../../x"),
                                            metadata=md)) == grpc.StatusCode.PERMISSION_DENIED
    too_big = generate(study_id="G-5", image_data=bytes(MAX_MESSAGE + 1))
    assert code_of(lambda: reports.Generate(too_big, metadata=md)
                   ) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_callers_are_authenticated_authorized_and_audited(
        stack: LocalStack, reports: service_grpc.ReportServiceStub, tmp_path: Path) -> None:
    request = service_pb.GenerateRequest(study_id="GRPC-AUTH",
                                         image_data=dicom_bytes(tmp_path, 3_100_005))
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: reports.Generate(request)) == unauthenticated
    assert code_of(lambda: list(reports.GenerateStream(request))) == unauthenticated
    assert code_of(lambda: reports.Generate(request, metadata=(
        ("authorization", "Bearer not.a.token"),))) == unauthenticated
    assert code_of(lambda: reports.Generate(request, metadata=(
        ("x-api-key", "rr_forged"),))) == unauthenticated
    assert code_of(lambda: reports.Generate(request, metadata=bearer(stack, "admin"))
                   ) == grpc.StatusCode.PERMISSION_DENIED
    # a machine with an API key makes a report; another machine cannot see it
    key = create_api_key("grpc-machine", Role.service, AuthSettings(key_dir=stack.config.key_dir))
    made = reports.Generate(request, metadata=(("x-api-key", key),), timeout=120)
    assert made.status == pb.REPORT_STATUS_COMPLETED
    other = bearer(stack, "service", "another-machine")
    assert code_of(lambda: reports.GetReport(service_pb.GetReportRequest(
        report_id=made.report_id), metadata=other)) == grpc.StatusCode.NOT_FOUND
    assert reports.GetReport(service_pb.GetReportRequest(report_id=made.report_id),
                             metadata=bearer(stack, "admin")).report_id == made.report_id
    audit = httpx.get(f"{stack.config.gateway_url}/api/v1/audit",
                      params={"resource_id": made.report_id, "limit": 50},
                      headers=dict(bearer(stack, "admin")), timeout=30).json()
    seen = {(e["actor"], e["action"], e["outcome"]) for e in audit}
    assert {("grpc-machine", "create", "success"), ("another-machine", "read", "denied"),
            ("local-admin", "read", "success")} <= seen
    denials = httpx.get(f"{stack.config.gateway_url}/api/v1/audit", params={"limit": 200},
                        headers=dict(bearer(stack, "admin")), timeout=30).json()
    assert any(e["actor"] == "anonymous" and e["outcome"] == "denied" for e in denials)
    assert any(e["actor"] == "local-admin" and e["action"] == "access"
               and e["outcome"] == "denied" for e in denials)


def test_health_reflection_and_metrics_answer(stack: LocalStack, channel: grpc.Channel,
                                              reports: service_grpc.ReportServiceStub) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "radreport.v1.ReportService"):
        deadline = time.monotonic() + 30
        while True:  # SERVING once the readiness watch has seen Redis, Triton and the store
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status == health_pb2.HealthCheckResponse.SERVING
    assert code_of(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope"))
                   ) == grpc.StatusCode.NOT_FOUND

    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    (listing,) = reflect.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in listing.list_services_response.service}
    assert {"radreport.v1.ReportService", "grpc.health.v1.Health"} <= names
    (found,) = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="radreport.v1.ReportService")]))
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in found.file_descriptor_response.file_descriptor_proto]
    methods = {m.name for f in files for s in f.service for m in s.method}
    assert methods == {"Generate", "GenerateStream", "GetReport", "ListStudyReports"}

    metrics = httpx.get(f"{stack.config.gateway_url}/metrics", timeout=30).text
    assert 'radreport_grpc_requests_total{code="OK",method="Generate"}' in metrics
    assert 'radreport_grpc_requests_total{code="UNAUTHENTICATED",method="Generate"}' in metrics
    assert "radreport_stream_first_sentence_seconds_count" in metrics


def test_radreport_stream_prints_sentences_as_they_come(stack: LocalStack,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "cli-study.dcm"
    path.write_bytes(dicom_bytes(tmp_path, 3_100_006))
    done = subprocess.run([sys.executable, "-m", "radreport.cli", "stream", str(path)],
                          env=stack.config.environment(), capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.endswith("inferring") for line in lines)
    sentences = [line for line in lines if "] " in line and "-> boxes" in line]
    assert sentences and "[0]" in sentences[0]
    assert "completed" in lines[-1] and f"{len(sentences)} sentences" in lines[-1]
    # a refusal is one line on stderr and a non-zero exit, not a trace
    path.write_bytes(b"not an image")
    refused = subprocess.run([sys.executable, "-m", "radreport.cli", "stream", str(path)],
                             env=stack.config.environment(), capture_output=True, text=True,
                             timeout=60, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("gRPC INVALID_ARGUMENT:")


def test_a_client_that_hangs_up_does_not_lose_its_report(
        stack: LocalStack, reports: service_grpc.ReportServiceStub, tmp_path: Path) -> None:
    request = service_pb.GenerateRequest(study_id="GRPC-HANGUP",
                                         image_data=dicom_bytes(tmp_path, 3_100_007))
    call = reports.GenerateStream(request, metadata=bearer(stack), timeout=120)
    first = next(call)
    assert first.status.stage == Stage.STAGE_QUEUED
    call.cancel()
    deadline = time.monotonic() + 60
    while True:
        report = reports.GetReport(service_pb.GetReportRequest(report_id=first.report_id),
                                   metadata=bearer(stack))
        if report.status in (pb.REPORT_STATUS_COMPLETED, pb.REPORT_STATUS_FAILED):
            break
        assert time.monotonic() < deadline, "the report never finished"
        time.sleep(0.2)
    assert report.status == pb.REPORT_STATUS_COMPLETED and report.sentences
