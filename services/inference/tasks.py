"""The inference stage: one Triton request per report (the decode loop runs in Triton)."""

from __future__ import annotations

import time
from functools import cache

from radreport.serving.client import ReportClient
from services.common.metrics import MODEL_LATENCY
from services.common.queue import StageContext, stage_task
from services.common.schemas import LetterboxInfo, ReportStatus
from services.common.settings import get_common_settings
from services.inference.draft import draft_from_served
from services.inference.settings import get_inference_settings


@cache
def triton() -> ReportClient:
    """One gRPC client per worker process."""
    common, own = get_common_settings(), get_inference_settings()
    return ReportClient(common.triton_url, common.triton_model, timeout_s=own.timeout_s,
                        retries=own.retries)


@stage_task("infer", ReportStatus.inferring)
def infer(ctx: StageContext) -> None:
    report_id = ctx.report.id
    model_input = ctx.blobs.get_array(report_id, "model_input.npy")  # (1, S, S) float32
    prepared = ctx.blobs.get_json(report_id, "preprocess.json")
    start = time.perf_counter()
    (served,) = triton().generate(model_input[None])
    elapsed_ms = (time.perf_counter() - start) * 1000
    MODEL_LATENCY.observe(elapsed_ms / 1000)
    draft = draft_from_served(served, LetterboxInfo(**prepared["letterbox"]),
                              get_inference_settings().box_threshold, elapsed_ms)
    ctx.blobs.put_json(report_id, "draft.json", draft.model_dump(mode="json"))
