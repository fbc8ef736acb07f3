"""The grounding stage: a preview overlay per sentence on the image, and the compact maps.

Full-size overlays are drawn on first request (``services.grounding.render``).
"""

from __future__ import annotations

from services.common.queue import StageContext, stage_task
from services.common.schemas import Draft
from services.grounding.overlays import compact_maps, write_overlays
from services.grounding.render import PREVIEW_SIDE, display_image
from services.preprocess.settings import get_preprocess_settings


@stage_task("ground", None)  # runs after the report is completed
def ground(ctx: StageContext) -> None:
    report_id = ctx.report.id
    draft = Draft.model_validate(ctx.blobs.get_json(report_id, "draft.json"))
    display = display_image(ctx.blobs, report_id, ctx.report.source["blob"],
                            get_preprocess_settings().max_pixels)
    write_overlays(display, draft, ctx.blobs.folder(report_id) / "overlays",
                   preview_side=PREVIEW_SIDE, full=False)
    ctx.blobs.put_json(report_id, "grounding.json", compact_maps(draft))
