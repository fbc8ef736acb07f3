"""The whole pipeline in one place: ingest, preprocess, infer, ground, format+store, notify.

Each stage is a Celery task on its own queue (``services.common.queue.STAGE_QUEUES``),
implemented by its service and linked here into one chain per report:

1. ingest (gateway or DICOM gateway): the image is written to the blob store and a report
   row created, idempotently per study and model version; then ``submit``.
2. ``radreport.preprocess`` (services.preprocess): decode DICOM/PNG/JPEG, refuse what is not
   a chest radiograph, letterbox to the model input; blobs ``model_input.npy``,
   ``display.npy``, ``preprocess.json``.
3. ``radreport.infer`` (services.inference): one streaming Triton request per report;
   each sentence, with its boxes mapped back to original pixels, is published as soon as
   it is decoded (``services.common.events``, followed by the gRPC ``GenerateStream``);
   blob ``draft.json``.
4. ``radreport.format`` (services.fhir): structured findings, review flags, the FHIR
   bundle (blob ``fhir.json``); the report is stored as completed, then waiters are notified.
5. ``radreport.ground`` (services.grounding), after completion: a preview overlay PNG per
   sentence and the compact maps (blobs ``overlays/``, ``grounding.json``). Drawing them
   cost more than the model itself, so they are not on the report's critical path: a
   product asked for before this stage has made it is drawn on request
   (``services.grounding.render``).

A stage that fails permanently (bad input) ends the chain with the report failed and its
reason; see ``services.common.queue`` for retries, redelivery and dead-lettering.
"""

from __future__ import annotations

from celery import chain

from services.common.queue import app

STAGES = ("preprocess", "infer", "format", "ground")


def submit(report_id: str, generation: int = 0, start: str = STAGES[0]) -> None:
    """Queue one report's chain from ``start``; messages carry only its id and generation
    (a re-driven chain has a new one, and messages of older generations are ignored)."""
    chain(*(app.signature(f"radreport.{stage}", args=(report_id, generation), immutable=True)
            for stage in STAGES[STAGES.index(start):])).apply_async()
