"""The preprocessing stage: decode, check, letterbox; the image never leaves the blob store."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from radreport.model.report import DEFAULT_MODEL_DIR, MODEL_INFO_FILE, ModelInfo
from services.common.metrics import INPUT_DRIFT
from services.common.queue import PermanentError, StageContext, stage_task
from services.common.schemas import LetterboxInfo, ReportStatus
from services.preprocess import drift
from services.preprocess.imaging import (
    InputRefused,
    intensity_histogram,
    load_image,
    prepare_for_model,
)
from services.preprocess.settings import get_preprocess_settings


def model_dir() -> Path:
    return get_preprocess_settings().model_dir or DEFAULT_MODEL_DIR


@cache
def model_input_size() -> int:
    return ModelInfo.load(model_dir() / MODEL_INFO_FILE).image_size


@stage_task("preprocess", ReportStatus.preprocessing, done="preprocessed")
def preprocess(ctx: StageContext) -> None:
    settings = get_preprocess_settings()
    report_id = ctx.report.id
    path = ctx.blobs.path(report_id, ctx.report.source["blob"])
    try:
        decoded = load_image(path, max_pixels=settings.max_pixels,
                             model_side=model_input_size())
    except InputRefused as err:
        raise PermanentError(str(err)) from err
    model_input, letterbox = prepare_for_model(decoded, model_input_size(), clahe=settings.clahe)
    ctx.blobs.put_array(report_id, "model_input.npy", model_input[None].astype(np.float32))
    training = drift.reference(model_dir())  # the same model's inputs, at its input size
    if training is not None:
        INPUT_DRIFT.observe(drift.ks_distance(intensity_histogram(model_input), training))
    if not decoded.reduced:  # else the grounding stage decodes the full image itself
        ctx.blobs.put_unit_image(report_id, "display.npy", decoded.display)
    ctx.blobs.put_json(report_id, "preprocess.json", {
        "letterbox": LetterboxInfo(size=letterbox.size, scale=letterbox.scale,
                                   pad_x=letterbox.pad_x, pad_y=letterbox.pad_y,
                                   original_shape=letterbox.original_shape).model_dump(),
        "quality": decoded.quality.model_dump() if decoded.quality else None,
        "source_format": decoded.source_format,
    })
