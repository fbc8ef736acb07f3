"""The grounding stage: one overlay per sentence on the image, and the compact maps."""

from __future__ import annotations

import numpy as np

from services.common.queue import StageContext, stage_task
from services.common.schemas import Draft, ReportStatus
from services.grounding.overlays import compact_maps, write_overlays


@stage_task("ground", ReportStatus.formatting)
def ground(ctx: StageContext) -> None:
    report_id = ctx.report.id
    draft = Draft.model_validate(ctx.blobs.get_json(report_id, "draft.json"))
    display = ctx.blobs.get_array(report_id, "display.npy").astype(np.float32) / 65535.0
    write_overlays(display, draft, ctx.blobs.folder(report_id) / "overlays")
    ctx.blobs.put_json(report_id, "grounding.json", compact_maps(draft))
