"""``radreport bench stack``: the whole stack end to end, as a hospital would load it.

Starts the local stack on free ports (real Redis, tritonserver, one Celery worker per stage,
the gateway) and prints, in one run on one machine:

1. end-to-end latency p50/p95 of synchronous ``POST /api/v1/reports/generate`` calls, one
   study at a time, the time of each stage, and the share of the time spent outside the
   model and the pixel decoding (queue hops, Triton client, FHIR, overlays, store), against
   the model's own time (ONNX Runtime in-process on the same input);
2. DICOM decoding of a 2,048 px JPEG 2000 study against the model's time;
3. a burst of studies posted at once (asynchronously): all must complete, none lost, none
   duplicated, and the broker's messages must carry ids, not pixels;
4. the gRPC ``GenerateStream``: when the first sentence, the last sentence and the finished
   report reach the client, and whether the first sentence arrives before the model has
   decoded the last one (sentences are stamped when decoded; one machine, one clock).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import redis
from pydicom.uid import JPEG2000Lossless

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, options_for, write_study_dicom
from radreport.model.report import ReportGenerator
from radreport.stack import LocalStack, StackConfig
from services.common.queue import STAGE_QUEUES
from services.common.store import Store
from services.preprocess.imaging import load_image, prepare_for_model


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _timed(fn: object, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return times


def run(count: int = 20, burst: int = 200, size: int = 1024) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        studies = [write_study_dicom(generate_study(seed, size), root / "studies",
                                     options_for(seed)) for seed in range(count)]
        j2k = write_study_dicom(generate_study(1000, 2048), root / "j2k",
                                DicomOptions("DX", "MONOCHROME2", 12, str(JPEG2000Lossless)))
        generator = ReportGenerator()
        side = generator.info.image_size  # the shipped model's input (512 px for 0.4.0)

        def model_only(path: Path) -> float:
            model_input, letterbox = prepare_for_model(load_image(path, model_side=side), side)
            batch = model_input[None, None].astype(np.float32)
            return statistics.median(_timed(
                lambda: generator.generate_prepared(batch, [letterbox]), 3))

        model_ms = statistics.median(model_only(p) for p in studies[: min(5, count)])
        # what preprocessing does: decode only as far as the model's input needs
        decode_ms = statistics.median(
            statistics.median(_timed(lambda p=p: load_image(p, model_side=side), 3))
            for p in studies[:5])
        j2k_decode_ms = statistics.median(_timed(lambda: load_image(j2k, model_side=side), 5))
        j2k_full_ms = statistics.median(_timed(lambda: load_image(j2k), 3))
        yield (f"model alone (ONNX Runtime in-process, one study): p50 {model_ms:.0f} ms; "
               f"DICOM decode of the {size} px studies: p50 {decode_ms:.0f} ms")
        yield (f"2,048 px JPEG 2000 decode for the model: p50 {j2k_decode_ms:.0f} ms = "
               f"{100 * j2k_decode_ms / model_ms:.0f}% of the model's time (goal <= 50%); "
               f"in full (for the overlays): {j2k_full_ms:.0f} ms")

        config = StackConfig.on_free_ports(root / "stack")
        config.extra_env = {"RADREPORT_GATEWAY_SYNC_WAIT_S": "300"}
        with LocalStack(config) as stack, httpx.Client(
                base_url=config.gateway_url, timeout=600, headers={
                    "Authorization": f"Bearer {config.token('service', 'bench', 86400)}"},
        ) as api:
            yield from _sequential(api, studies, model_ms, decode_ms)
            yield from _streaming(config, studies)
            yield from _burst(api, stack, studies, burst)


def _post(api: httpx.Client, path: Path, study_id: str, asynchronous: bool = False,
          ) -> httpx.Response:
    headers = {"Prefer": "respond-async"} if asynchronous else {}
    return api.post("/api/v1/reports/generate", headers=headers, data={"study_id": study_id},
                    files={"file": (path.name, path.read_bytes())})


def _sequential(api: httpx.Client, studies: list[Path], model_ms: float, decode_ms: float,
                ) -> Iterator[str]:
    _post(api, studies[0], "WARMUP")
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    report_ids = []
    for i, path in enumerate(studies):
        start = time.perf_counter()
        response = _post(api, path, f"BENCH-SEQ-{i}")
        latencies.append((time.perf_counter() - start) * 1000)
        body = response.json()
        if body["status"] != "completed":
            yield f"study {i}: {body['status']} {body.get('status_reason')}"
            continue
        report_ids.append(body["report_id"])
    time.sleep(2)  # the last stages record their times just after the report completes
    for report_id in report_ids:
        body = api.get(f"/api/v1/reports/{report_id}").json()
        for stage, ms in body["stage_timings_ms"].items():
            stages.setdefault(stage, []).append(ms)
    p50 = _p(latencies, 50)
    yield (f"end to end, one study at a time ({len(studies)} studies): p50 {p50:.0f} ms, "
           f"p95 {_p(latencies, 95):.0f} ms, {3_600_000 / statistics.mean(latencies):.0f} "
           "studies/hour")
    yield ("  stage p50: " + ", ".join(f"{s} {_p(v, 50):.0f} ms" for s, v in stages.items())
           + " (ground runs after the report is answered)")
    outside = p50 - model_ms - decode_ms
    yield (f"  outside the model and decoding: {outside:.0f} ms = "
           f"{100 * outside / model_ms:.0f}% of the model's own time (goal <= 20%)")


def _streaming(config: StackConfig, studies: list[Path]) -> Iterator[str]:
    import grpc

    from radreport.v1 import report_service_pb2 as service_pb
    from radreport.v1 import report_service_pb2_grpc as service_grpc

    metadata = (("authorization", f"Bearer {config.token('service', 'bench', 86400)}"),)
    first, last, done, margin = [], [], [], []
    with grpc.insecure_channel(config.grpc_target) as channel:
        stub = service_grpc.ReportServiceStub(channel)
        for i, path in enumerate(studies):
            request = service_pb.GenerateRequest(study_id=f"BENCH-STREAM-{i}",
                                                 image_data=path.read_bytes())
            start = time.perf_counter()
            arrivals, decoded = [], []
            for event in stub.GenerateStream(request, metadata=metadata, timeout=600):
                if event.HasField("sentence"):
                    arrivals.append((time.perf_counter() - start, time.time()))
                    decoded.append(event.time.ToNanoseconds() / 1e9)
            done.append((time.perf_counter() - start) * 1000)
            if arrivals:
                first.append(arrivals[0][0] * 1000)
                last.append(arrivals[-1][0] * 1000)
                margin.append((max(decoded) - arrivals[0][1]) * 1000)
    early = sum(m > 0 for m in margin)
    yield (f"gRPC GenerateStream ({len(studies)} studies, one at a time): first sentence p50 "
           f"{_p(first, 50):.0f} ms, last sentence p50 {_p(last, 50):.0f} ms, finished report "
           f"p50 {_p(done, 50):.0f} ms after the call")
    yield (f"  first sentence at the client before the last was decoded: {early} of "
           f"{len(margin)} studies (p50 margin {_p(margin, 50):.0f} ms)")


def _burst(api: httpx.Client, stack: LocalStack, studies: list[Path], burst: int,
           ) -> Iterator[str]:
    broker = redis.Redis.from_url(stack.config.redis_url)
    store = Store(f"sqlite:///{stack.config.data_dir / 'radreport.db'}")
    largest_message = 0
    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(
            lambda i: _post(api, studies[i % len(studies)], f"BENCH-BURST-{i}", True),
            range(burst)))
    for queue in STAGE_QUEUES.values():
        for message in broker.lrange(queue, 0, 20):
            largest_message = max(largest_message, len(message))
    accepted = [r.json()["report_id"] for r in responses if r.status_code == 202]
    pending = set(accepted)
    while pending and time.perf_counter() - start < 3600:
        for report_id in list(pending):
            report = store.get(report_id)
            if report is not None and report.status in ("completed", "failed"):
                pending.discard(report_id)
        time.sleep(1)
    elapsed = time.perf_counter() - start
    reports = [store.get(i) for i in accepted]
    completed = sum(1 for r in reports if r is not None and r.status == "completed")
    duplicated = sum(1 for i in accepted
                     if [c.status for c in store.history(i)].count("completed") > 1)
    yield (f"burst of {burst} studies posted at once: {len(accepted)} accepted, {completed} "
           f"completed, {len(pending)} unfinished, {duplicated} completed twice, "
           f"{len(set(accepted))} distinct reports; {elapsed:.0f} s = "
           f"{3600 * completed / elapsed:.0f} studies/hour")
    yield f"  largest broker message seen: {largest_message} bytes (ids only, no pixels)"
