"""Start a Celery worker for one pipeline stage (or all of them): the services' entry point.

``python -m services.preprocess`` (and ``.inference``, ``.grounding``, ``.fhir``) run this
for their own stage, so each service scales on its own queue. Tasks run in pool processes,
so metrics are collected in Prometheus' multiprocess mode and served by the main process
on ``RADREPORT_WORKER_METRICS_PORT`` (0: off).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import tempfile
from pathlib import Path


def _metrics_dir() -> Path:
    """Set up before prometheus_client is first imported: it picks its storage then."""
    folder = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR")
                  or tempfile.mkdtemp(prefix="radreport-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # values of a previous run of this worker
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


def main(argv: list[str] | None = None, stage: str | None = None) -> None:
    _metrics_dir()
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    from services.common.logs import configure_logging
    from services.common.queue import STAGE_QUEUES, app

    parser = argparse.ArgumentParser(description="Run a radreport pipeline worker.")
    parser.add_argument("--stage", default=stage or "all", choices=[*STAGE_QUEUES, "all"],
                        help="Which stage's queue to consume.")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="Worker processes (prefork); a lost process's task is requeued.")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.loglevel)
    port = int(os.environ.get("RADREPORT_WORKER_METRICS_PORT", "9100"))
    if port:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(port, addr=os.environ.get("RADREPORT_WORKER_METRICS_HOST",
                                                    "127.0.0.1"), registry=registry)
    queues = list(STAGE_QUEUES.values()) if args.stage == "all" else [STAGE_QUEUES[args.stage]]
    logging.getLogger(__name__).info("worker for %s starting", ",".join(queues))
    app.worker_main(["worker", "--queues", ",".join(queues), "--pool", "prefork",
                     "--concurrency", str(args.concurrency), "--loglevel", args.loglevel,
                     "--hostname", f"{args.stage}-{socket.gethostname()}-%i@%h",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"])
