"""A real tritonserver (CPU, Python backend) serving whole reports from model_repository/."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from radreport.data.phantoms import generate_study
from radreport.model.prompt import ClinicalContext
from radreport.model.report import DEFAULT_MODEL_DIR, ModelInfo, ReportGenerator, to_model_input
from radreport.serving.client import (
    STREAM_MODEL,
    ReportClient,
    TritonRequestError,
    TritonUnavailableError,
)
from radreport.serving.tritonserver import DEFAULT_REPOSITORY, TritonServer, free_port

pytestmark = pytest.mark.integration
MODEL = "radreport_report"
SIZE = ModelInfo.load(DEFAULT_MODEL_DIR / "model.json").image_size  # model v2 0.4.0: 512


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with TritonServer(log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    """16 phantom test studies as model inputs (16, 1, SIZE, SIZE)."""
    return np.stack([to_model_input(generate_study(seed, 512).image, SIZE)[0]
                     for seed in range(2_000_000, 2_000_016)])[:, None]


@pytest.fixture(scope="module")
def reference(inputs: np.ndarray) -> list[dict[str, Any]]:
    """ONNX Runtime in this process, one study at a time."""
    generator = ReportGenerator()
    return [generator.generate_prepared(inputs[i : i + 1])[0].to_dict()
            for i in range(len(inputs))]


def infer(url: str, image: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("image", list(image.shape), "FP32")
    tensor.set_data_from_numpy(image)
    result = client.infer(MODEL, [tensor], client_timeout=120)
    report = json.loads(result.as_numpy("report_json")[0][0])
    return report, result.as_numpy("label_probs")[0]


def assert_same_report(served: dict[str, Any], expected: dict[str, Any]) -> None:
    assert served["text"] == expected["text"]
    assert served["token_ids"] == expected["token_ids"]
    assert served["model_version"] == expected["model_version"] == "radreport-phantom:0.4.0"
    assert len(served["sentences"]) == len(expected["sentences"])
    for got, want in zip(served["sentences"], expected["sentences"], strict=True):
        assert (got["text"], got["section"], got["boxes"]) == (
            want["text"], want["section"], want["boxes"])
        np.testing.assert_allclose(got["heatmap"], want["heatmap"], atol=1e-4)
    for name, prob in expected["label_probs"].items():
        assert served["label_probs"][name] == pytest.approx(prob, abs=1e-4)
    # the safety net (radreport.model.safety): model v2 has a calibration.json
    assert served["findings_present"] == expected["findings_present"]
    assert served["uncertain_findings"] == expected["uncertain_findings"]
    assert served["out_of_distribution"] == expected["out_of_distribution"]
    assert served["calibrated_confidence"] == pytest.approx(expected["calibrated_confidence"],
                                                            abs=1e-4)
    for key in ("ood_score", "ood_threshold"):
        assert (served[key] is None) == (expected[key] is None)
        if expected[key] is not None:
            assert served[key] == pytest.approx(expected[key], rel=1e-3)


def test_served_reports_equal_onnx_runtime(server: TritonServer, inputs: np.ndarray,
                                           reference: list[dict[str, Any]]) -> None:
    for i in range(3):
        report, probs = infer(server.grpc_url, inputs[i : i + 1])
        assert_same_report(report, reference[i])
        assert probs.shape == (14,)
        np.testing.assert_allclose(probs, list(reference[i]["label_probs"].values()), atol=1e-4)


def settled_stats(url: str, model: str = MODEL, at_least: int = 0) -> tuple[int, int]:
    """(inferences, executions) of a model once Triton has recorded them all: a request is
    counted a moment after its response is sent, so a client can be answered first."""
    client = grpcclient.InferenceServerClient(url)
    last = (-1, -1)
    for _ in range(50):
        stats = client.get_inference_statistics(model).model_stats[0]
        now = (int(stats.inference_count), int(stats.execution_count))
        if now == last and now[0] >= at_least:
            return now
        last = now
        time.sleep(0.2)
    return last


def test_sixteen_concurrent_requests_are_batched_and_all_correct(
        server: TritonServer, inputs: np.ndarray, reference: list[dict[str, Any]]) -> None:
    before = settled_stats(server.grpc_url)
    with ThreadPoolExecutor(16) as pool:
        served = list(pool.map(lambda i: infer(server.grpc_url, inputs[i : i + 1])[0],
                               range(16)))
    for got, want in zip(served, reference, strict=True):
        assert_same_report(got, want)
    after = settled_stats(server.grpc_url, at_least=before[0] + 16)
    inferences, executions = (a - b for a, b in zip(after, before, strict=True))
    assert inferences == 16
    assert executions < inferences  # the dynamic batcher really gathered requests


def test_a_wrongly_shaped_image_is_refused_with_a_clear_error(server: TritonServer) -> None:
    with pytest.raises(InferenceServerException, match="image"):
        infer(server.grpc_url, np.zeros((1, 1, 128, 128), np.float32))


def test_server_log_shows_the_model_ready(server: TritonServer) -> None:
    assert server.log_path is not None
    text = Path(server.log_path).read_text()
    assert "successfully loaded 'radreport_report'" in text


def test_report_client_returns_the_reports(server: TritonServer, inputs: np.ndarray,
                                           reference: list[dict[str, Any]]) -> None:
    client = ReportClient(server.grpc_url)
    assert client.ready()
    reports = client.generate(inputs[:2])
    assert len(reports) == 2
    for got, want in zip(reports, reference[:2], strict=True):
        assert_same_report(got, want)


def test_report_client_does_not_retry_a_malformed_request(server: TritonServer) -> None:
    client = ReportClient(server.grpc_url, backoff_s=5.0)
    with pytest.raises(TritonRequestError, match="image"):
        client.generate(np.zeros((1, 1, 64, 64), np.float32))  # would sleep 5 s if retried


def test_report_client_names_a_model_that_is_not_loaded(server: TritonServer) -> None:
    client = ReportClient(server.grpc_url, model="no_such_model", retries=1, backoff_s=0.01)
    assert not client.ready()
    with pytest.raises(TritonUnavailableError, match=r"no_such_model.*2 attempts"):
        client.generate(np.zeros((1, 1, SIZE, SIZE), np.float32))


def test_report_client_gives_a_clear_error_when_triton_is_down() -> None:
    client = ReportClient(f"127.0.0.1:{free_port()}", retries=2, backoff_s=0.01,
                          timeout_s=2.0)
    assert not client.ready()
    with pytest.raises(TritonUnavailableError, match=r"127\.0\.0\.1:\d+ could not serve"):
        client.generate(np.zeros((1, 1, SIZE, SIZE), np.float32))


def test_the_bls_loop_serves_the_same_reports(server: TritonServer, inputs: np.ndarray,
                                              reference: list[dict[str, Any]]) -> None:
    client = ReportClient(server.grpc_url, model="radreport_report_bls")
    for got, want in zip(client.generate(inputs[:2]), reference[:2], strict=True):
        assert_same_report(got, want)


def test_an_overload_is_rejected_cleanly_and_the_rest_answered(
        tmp_path: Path, inputs: np.ndarray, reference: list[dict[str, Any]]) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(DEFAULT_REPOSITORY, repository)
    config = repository / "radreport_report" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_queue_size: 64", "max_queue_size: 1"))
    with TritonServer(repository=repository, log_path=tmp_path / "triton.log") as small:
        def one(i: int) -> dict[str, Any] | str:
            try:
                return ReportClient(small.grpc_url, retries=0).generate(inputs[i : i + 1])[0]
            except TritonUnavailableError as err:
                return str(err)

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(one, range(16)))
    rejected = [o for o in outcomes if isinstance(o, str)]
    assert rejected and len(rejected) < 16
    assert all("queue" in message.lower() for message in rejected)
    for outcome, want in zip(outcomes, reference, strict=True):
        if not isinstance(outcome, str):
            assert_same_report(outcome, want)


def stream(url: str, image: np.ndarray) -> list[dict[str, Any]]:
    return list(ReportClient(url, model=STREAM_MODEL).generate_stream(image))


def test_the_decoupled_model_streams_each_sentence_before_the_report(
        server: TritonServer, inputs: np.ndarray, reference: list[dict[str, Any]]) -> None:
    for i in range(2):
        events = stream(server.grpc_url, inputs[i : i + 1])
        *sentences, report = events
        assert report["type"] == "report" and {e["type"] for e in sentences} == {"sentence"}
        assert_same_report(report, reference[i])
        assert [s["index"] for s in sentences] == list(range(len(reference[i]["sentences"])))
        for got, want in zip(sentences, reference[i]["sentences"], strict=True):
            assert (got["text"], got["section"], got["boxes"]) == (
                want["text"], want["section"], want["boxes"])
            np.testing.assert_allclose(got["heatmap"], want["heatmap"], atol=1e-4)
        decoded = [s["decoded_at"] for s in sentences]
        assert decoded == sorted(decoded) and decoded[0] < decoded[-1]  # one by one


def test_concurrent_streams_are_batched_and_each_gets_its_own_sentences(
        server: TritonServer, inputs: np.ndarray, reference: list[dict[str, Any]]) -> None:
    inferences, executions = settled_stats(server.grpc_url, STREAM_MODEL)
    with ThreadPoolExecutor(8) as pool:
        streams = list(pool.map(lambda i: stream(server.grpc_url, inputs[i : i + 1]), range(8)))
    for events, want in zip(streams, reference[:8], strict=True):
        assert_same_report(events[-1], want)
        assert [e["text"] for e in events[:-1]] == [s["text"] for s in want["sentences"]]
    after = settled_stats(server.grpc_url, STREAM_MODEL, inferences + 8)
    assert after[0] - inferences == 8
    assert after[1] - executions < 8  # the dynamic batcher gathered streams too


def test_a_stream_of_a_wrong_image_is_refused_without_retrying(server: TritonServer) -> None:
    client = ReportClient(server.grpc_url, model=STREAM_MODEL, backoff_s=5.0)
    with pytest.raises(TritonRequestError, match="image"):
        list(client.generate_stream(np.zeros((1, 1, 64, 64), np.float32)))
    # the client's stream is closed again: the next study streams normally
    assert client.generate_stream(np.zeros((1, 1, SIZE, SIZE), np.float32)).__next__()


CONTEXT = ClinicalContext(indication="Shortness of breath", age_years=71, sex="F")


def test_a_clinical_context_reaches_every_report_model(server: TritonServer,
                                                       inputs: np.ndarray) -> None:
    """The served reports equal in-process ones given the same contexts (the model puts
    them into its prompt), from the in-process loop and the BLS loop alike."""
    contexts = [CONTEXT, None]
    expected = [d.to_dict() for d in ReportGenerator().generate_prepared(
        inputs[:2], contexts=contexts)]
    for model in (MODEL, "radreport_report_bls"):
        served = ReportClient(server.grpc_url, model=model).generate(inputs[:2], contexts)
        for got, want in zip(served, expected, strict=True):
            assert_same_report(got, want)
    *_, report = ReportClient(server.grpc_url, model=STREAM_MODEL).generate_stream(
        inputs[:1], CONTEXT)
    assert_same_report(report, expected[0])


def _raw_stream_error(url: str, inputs: list[grpcclient.InferInput]) -> str:
    """The error of one request on the decoupled model, sent as given."""
    client = grpcclient.InferenceServerClient(url)
    answers: list[Any] = []
    client.start_stream(callback=lambda result, error: answers.append(error))
    try:
        client.async_stream_infer(STREAM_MODEL, inputs)
        deadline = time.monotonic() + 60
        while not answers and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.stop_stream()
    assert answers and answers[0] is not None, "the request was not refused"
    return str(answers[0])


def test_a_malformed_context_is_refused_without_echoing_it(server: TritonServer,
                                                           inputs: np.ndarray) -> None:
    image = grpcclient.InferInput("image", [1, 1, SIZE, SIZE], "FP32")
    image.set_data_from_numpy(inputs[:1])
    context = grpcclient.InferInput("context_json", [1, 1], "BYTES")
    context.set_data_from_numpy(np.array([[b'{"age_years": 200, "name": "Jane"}']],
                                         dtype=object))
    with pytest.raises(InferenceServerException, match="context_json row 0") as caught:
        grpcclient.InferenceServerClient(server.grpc_url).infer(
            MODEL, [image, context], client_timeout=120)
    streamed = _raw_stream_error(server.grpc_url, [image, context])
    for message in (str(caught.value), streamed):
        assert "context_json row 0" in message
        assert "Jane" not in message and "200" not in message
    # both models go on serving
    assert ReportClient(server.grpc_url).generate(inputs[:1])[0]["text"]
    assert stream(server.grpc_url, inputs[:1])[-1]["type"] == "report"
