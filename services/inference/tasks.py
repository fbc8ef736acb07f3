"""The inference stage: one streaming Triton request per report (the decode loop runs in
Triton), with the request's clinical context when it has one; each sentence is published as
soon as Triton has decoded it."""

from __future__ import annotations

import time
from functools import cache

from radreport.serving.client import ReportClient, TritonUnavailableError
from services.common import events
from services.common.metrics import MODEL_LATENCY
from services.common.queue import DependencyUnavailable, StageContext, redis_client, stage_task
from services.common.schemas import DraftSentence, LetterboxInfo, ReportStatus
from services.common.settings import get_common_settings
from services.inference.context import clinical_context
from services.inference.draft import draft_from_served, draft_sentence
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
    letterbox = LetterboxInfo(**ctx.blobs.get_json(report_id, "preprocess.json")["letterbox"])
    box, threshold = letterbox.to_letterbox(), get_inference_settings().box_threshold
    start = time.perf_counter()
    served = None
    sentences: list[DraftSentence] = []
    context = clinical_context(ctx.report.request or {})
    try:
        for event in triton().generate_stream(model_input[None], context):
            if event["type"] == "report":
                served = event
                break
            sentence = draft_sentence(event, box, threshold)
            sentences.append(sentence)
            events.publish(redis_client(), report_id, "sentence", index=event["index"],
                           at=event["decoded_at"], sentence=sentence.model_dump(mode="json"),
                           letterbox=letterbox.model_dump(mode="json"))
    except TritonUnavailableError as err:
        raise DependencyUnavailable("Triton is unavailable") from err
    assert served is not None  # generate_stream ends with the report or raises
    elapsed_ms = (time.perf_counter() - start) * 1000
    MODEL_LATENCY.observe(elapsed_ms / 1000)
    draft = draft_from_served(served, sentences, letterbox, elapsed_ms)
    ctx.blobs.put_json(report_id, "draft.json", draft.model_dump(mode="json"))
