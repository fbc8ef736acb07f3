"""A report's progress as it happens, for clients that stream it (the gRPC GenerateStream).

Each report has a Redis stream, ``radreport:events:<report id>``, that the stages append to:
status changes, each sentence as the model decodes it, and the end. A reader that arrives
late reads it from the start, so it misses nothing, and a reader that arrives after the
stream expired (``EVENTS_TTL_S``) falls back to the stored report. Events carry report ids,
stages, and the sentences of the draft, never patient data; publishing is best effort: a
Redis hiccup costs a live view, never a report.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aioredis

log = logging.getLogger(__name__)

EVENTS_KEY = "radreport:events:{}"
EVENTS_TTL_S = 3600
EVENTS_MAXLEN = 500  # a report has tens of events; this only bounds a runaway writer


@dataclass(frozen=True)
class ReportEvent:
    """``kind`` is "status" (``stage``), "sentence" (``sentence``) or "finished" (``status``)."""

    id: str  # the Redis stream entry id: read on from here
    kind: str
    at: float  # seconds since the epoch, when it happened
    data: dict[str, Any]


def publish(client: redis.Redis, report_id: str, kind: str, **data: Any) -> None:
    """Append one event to the report's stream (and keep the stream for ``EVENTS_TTL_S``)."""
    key = EVENTS_KEY.format(report_id)
    body = json.dumps({"kind": kind, "at": data.pop("at", None) or time.time(), **data})
    try:
        pipe = client.pipeline(transaction=False)
        pipe.xadd(key, {"event": body}, maxlen=EVENTS_MAXLEN, approximate=True)
        pipe.expire(key, EVENTS_TTL_S)
        pipe.execute()
    except redis.RedisError:
        log.warning("could not publish a %s event of %s", kind, report_id)


async def read_events(client: aioredis.Redis, report_id: str, after: str = "0",
                      block_ms: int = 1000) -> list[ReportEvent]:
    """Events after entry ``after``, waiting up to ``block_ms`` for the first one."""
    answer = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], await client.xread(
        {EVENTS_KEY.format(report_id): after}, block=block_ms, count=100))
    events = []
    for _key, entries in answer or []:
        for entry_id, fields in entries:
            body = json.loads(fields[b"event"])
            events.append(ReportEvent(entry_id.decode(), body.pop("kind"), body.pop("at"),
                                      body))
    return events
