"""Start a Celery worker for one pipeline stage (or all of them): the services' entry point.

``python -m services.preprocess`` (and ``.inference``, ``.grounding``, ``.fhir``) run this
for their own stage, so each service scales on its own queue.
"""

from __future__ import annotations

import argparse
import logging
import socket

from services.common.logs import configure_logging
from services.common.queue import STAGE_QUEUES, app


def main(argv: list[str] | None = None, stage: str | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a radreport pipeline worker.")
    parser.add_argument("--stage", default=stage or "all",
                        choices=[*STAGE_QUEUES, "all"], help="Which stage's queue to consume.")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="Worker processes (prefork); a lost process's task is requeued.")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.loglevel)
    queues = list(STAGE_QUEUES.values()) if args.stage == "all" else [STAGE_QUEUES[args.stage]]
    logging.getLogger(__name__).info("worker for %s starting", ",".join(queues))
    app.worker_main(["worker", "--queues", ",".join(queues), "--pool", "prefork",
                     "--concurrency", str(args.concurrency), "--loglevel", args.loglevel,
                     "--hostname", f"{args.stage}-{socket.gethostname()}-%i@%h",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"])
