"""The Celery app every service shares, and the one way a pipeline stage is made a task.

Messages carry a report id only, never pixels or report text. Tasks are acknowledged after
they finish (``acks_late``) and rejected back to the queue when their worker dies
(``reject_on_worker_lost``), so a crash loses nothing; a stage that is delivered again finds
its inputs by report id and redoes only that stage, writing its outputs atomically. A
stage that keeps failing is dead-lettered after ``max_attempts`` deliveries: the report is
marked failed with the reason, and the message is kept in a Redis list for operators.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import redis
from celery import Celery, Task
from celery.exceptions import Ignore, MaxRetriesExceededError
from kombu import Queue

from services.common import events
from services.common.blobs import BlobStore
from services.common.metrics import REPORTS_FINISHED, STAGE_LATENCY
from services.common.schemas import ReportStatus
from services.common.settings import CommonSettings, get_common_settings
from services.common.store import Report, Store, utcnow

log = logging.getLogger(__name__)

# stage -> queue; one queue per stage so each service scales on its own
STAGE_QUEUES = {"preprocess": "preprocess", "infer": "inference", "ground": "grounding",
                "format": "fhir"}
TASK_MODULES = ["services.preprocess.tasks", "services.inference.tasks",
                "services.grounding.tasks", "services.fhir.tasks"]
DEAD_LETTER_KEY = "radreport:dead-letter"


class PermanentError(Exception):
    """Input this stage can never process (bad image, wrong modality): fail the report now.

    The message is shown to clients, so it must carry no PHI.
    """


def make_celery(settings: CommonSettings) -> Celery:
    app = Celery("radreport", broker=settings.redis_url, include=TASK_MODULES)
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_backend=None,
        task_ignore_result=True,
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_queues=[Queue(q) for q in STAGE_QUEUES.values()],
        task_routes={f"radreport.{stage}": {"queue": q} for stage, q in STAGE_QUEUES.items()},
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False, worker_send_task_events=False,
    )
    return app


app = make_celery(get_common_settings())


@dataclass
class StageContext:
    """What a stage function gets: its report and the stores, opened once per worker."""

    report: Report
    store: Store
    blobs: BlobStore
    settings: CommonSettings


@cache
def stores() -> tuple[Store, BlobStore]:
    settings = get_common_settings()
    return Store(settings.sqlalchemy_url), BlobStore(settings.blobs)


@cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(get_common_settings().redis_url)


def notify(report_id: str, status: str) -> None:
    """Tell waiters (a synchronous generate, a gRPC stream) that a report finished."""
    events.publish(redis_client(), report_id, "finished", status=status)


def dead_letter(report_id: str, stage: str, reason: str) -> None:
    store, _ = stores()
    if store.set_status(report_id, ReportStatus.failed, reason, failure="error"):
        REPORTS_FINISHED.labels(ReportStatus.failed.value).inc()
        notify(report_id, ReportStatus.failed.value)
    redis_client().rpush(DEAD_LETTER_KEY, json.dumps({
        "report_id": report_id, "stage": stage, "reason": reason, "at": utcnow().isoformat()}))
    log.error("dead-lettered %s at %s: %s", report_id, stage, reason)


class DependencyUnavailable(Exception):
    """A service the stage needs (Triton) is away: wait for it, without spending attempts.

    Retried with backoff capped at ``UNAVAILABLE_RETRY_CAP_S`` for up to
    ``dependency_wait_s``; only then is the report dead-lettered.
    """


UNAVAILABLE_RETRY_CAP_S = 30.0
StageFunction = Callable[[StageContext], None]


def stage_task(stage: str, status: ReportStatus | None, done: str | None = None,
               ) -> Callable[[StageFunction], Task]:
    """Make ``fn(ctx)`` the Celery task of one stage, with retries and dead-lettering.

    Entering ``status`` and, on success, reaching ``done`` are published as status events.

    Attempts are counted per delivery in the store, so redeliveries after a lost worker
    count too: a message that kills its worker every time is dead-lettered, not looped.
    """
    def register(fn: StageFunction) -> Task:
        @app.task(name=f"radreport.{stage}", bind=True, max_retries=None)
        def run(self: Task, report_id: str, generation: int = 0) -> str:
            settings = get_common_settings()
            store, blobs = stores()
            report = store.get(report_id)
            after_completion = status is None  # a stage that only precomputes products
            if report is None or (ReportStatus(report.status).finished
                                  and not (after_completion and report.status == "completed")):
                raise Ignore()  # unknown, or finished by an earlier delivery: stop the chain
            if generation != report.generation:
                raise Ignore()  # superseded by a re-driven chain: that one carries on
            attempt = store.count_attempt(report_id, stage)
            if attempt > settings.max_attempts:
                dead_letter(report_id, stage, f"{stage} failed {settings.max_attempts} times")
                raise Ignore()
            if status is not None:
                store.set_status(report_id, status)
                events.publish(redis_client(), report_id, "status", stage=status.value)
            start = time.perf_counter()
            try:
                fn(StageContext(report, store, blobs, settings))
                elapsed = time.perf_counter() - start
                store.record_timing(report_id, stage, elapsed * 1000)
                if done is not None:
                    events.publish(redis_client(), report_id, "status", stage=done)
                STAGE_LATENCY.labels(stage, "success").observe(elapsed)
            except DependencyUnavailable as err:
                STAGE_LATENCY.labels(stage, "unavailable").observe(time.perf_counter() - start)
                store.count_attempt(report_id, stage, step=-1)
                waits = self.request.retries
                if waits * UNAVAILABLE_RETRY_CAP_S > settings.dependency_wait_s:
                    dead_letter(report_id, stage, f"{stage}: a dependency stayed unavailable")
                    raise Ignore() from err
                log.warning("%s of %s waits for a dependency (%s)", stage, report_id, err)
                raise self.retry(countdown=min(UNAVAILABLE_RETRY_CAP_S,
                                               settings.retry_backoff_s * 2 ** waits),
                                 exc=err) from err
            except PermanentError as err:
                STAGE_LATENCY.labels(stage, "refused").observe(time.perf_counter() - start)
                if store.set_status(report_id, ReportStatus.failed, str(err),
                                    failure="refused"):
                    REPORTS_FINISHED.labels(ReportStatus.failed.value).inc()
                    notify(report_id, ReportStatus.failed.value)
                raise Ignore() from err
            except Exception as err:
                STAGE_LATENCY.labels(stage, "error").observe(time.perf_counter() - start)
                if after_completion and attempt >= settings.max_attempts:
                    log.error("%s of %s gave up after %d attempts; products are drawn on "
                              "request instead", stage, report_id, attempt)
                    raise Ignore() from err
                if attempt >= settings.max_attempts:
                    dead_letter(report_id, stage, f"{stage} failed {attempt} times, last with "
                                f"{type(err).__name__}")
                    raise Ignore() from err
                log.warning("%s of %s failed (%s), attempt %d; retrying", stage, report_id,
                            type(err).__name__, attempt)
                try:
                    raise self.retry(countdown=settings.retry_backoff_s * 2 ** (attempt - 1),
                                     exc=err)
                except MaxRetriesExceededError:
                    dead_letter(report_id, stage, f"{stage} could not be retried")
                    raise Ignore() from err
            return report_id
        return run
    return register
