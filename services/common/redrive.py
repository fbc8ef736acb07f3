"""The re-driver: a report whose next stage message is gone is queued again, once.

Messages are lost when Redis restarts without its data, when a worker cannot publish the
next stage (Redis away at that moment), or when an acknowledgement fails and the message
sits reserved until Celery's visibility timeout (600 s) brings it back. The broker's
timeout is far too slow for a 60 s recovery, so this asks the broker directly.

A report is lost when it is unfinished, has not moved for ``idle_s``, and the message of
its next stage (for its current generation) is neither waiting in that stage's queue nor
reserved by a worker for less than ``in_flight_s``. It is re-driven by bumping its
generation (a compare-and-set, so two re-drivers cannot both win) and queueing a new chain
from that stage; any older message that turns up later is stale and ignored, so nothing
runs twice.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from services.common.metrics import REPORTS_REDRIVEN
from services.common.pipeline import STAGES, submit
from services.common.queue import STAGE_QUEUES
from services.common.store import Report, Store

log = logging.getLogger(__name__)

MessageKey = tuple[str, int, str]  # report id, generation, stage
# kombu's Redis transport keeps reserved messages here (hash) with their times (sorted set)
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


@dataclass
class BrokerView:
    """The stage messages Redis holds: waiting in a queue, or reserved (and since when)."""

    waiting: set[MessageKey]
    reserved: dict[MessageKey, float]


def message_key(raw: bytes | str | dict[str, Any]) -> MessageKey | None:
    """(report id, generation, stage) of one of our Celery messages; None for others."""
    try:
        message = raw if isinstance(raw, dict) else json.loads(raw)
        task = str(message["headers"]["task"])
        args = json.loads(base64.b64decode(message["body"]))[0]
        if not task.startswith("radreport."):
            return None
        return str(args[0]), int(args[1]) if len(args) > 1 else 0, task.removeprefix(
            "radreport.")
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def read_broker(client: redis.Redis) -> BrokerView:
    waiting: set[MessageKey] = set()
    for queue in STAGE_QUEUES.values():
        messages: Any = client.lrange(queue, 0, -1)
        for raw in messages:
            key = message_key(raw)
            if key is not None:
                waiting.add(key)
    index: Any = client.zrange(UNACKED_INDEX, 0, -1, withscores=True)
    since: dict[Any, float] = {tag: float(score) for tag, score in index}
    unacked: Any = client.hgetall(UNACKED)
    reserved: dict[MessageKey, float] = {}
    for tag, raw in unacked.items():
        try:
            key = message_key(json.loads(raw)[0])  # [message, exchange, routing key]
        except (ValueError, IndexError):
            key = None
        if key is not None:
            reserved[key] = since.get(tag, 0.0)
    return BrokerView(waiting, reserved)


def next_stage(report: Report) -> str:
    """The first stage of the report's chain that has not finished."""
    done = report.timings or {}
    return next((stage for stage in STAGES if stage not in done), STAGES[-1])


def redrive_lost(store: Store, client: redis.Redis, idle_s: float, in_flight_s: float,
                 ) -> list[str]:
    """Queue again every lost report; the ids re-driven."""
    view = read_broker(client)
    now = time.time()
    redriven = []
    for report in store.idle_unfinished(idle_s):
        stage = next_stage(report)
        key = (report.id, report.generation, stage)
        if key in view.waiting:
            continue
        reserved_at = view.reserved.get(key)
        if reserved_at is not None and now - reserved_at < in_flight_s:
            continue
        if store.next_generation(report.id, report.generation):
            submit(report.id, report.generation + 1, stage)
            REPORTS_REDRIVEN.labels(stage).inc()
            log.warning("re-driving report %s from %s: its message was lost", report.id, stage)
            redriven.append(report.id)
    return redriven
