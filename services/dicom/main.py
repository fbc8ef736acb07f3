"""``python -m services.dicom``: the Storage SCP, study completion and the results outbox."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from importlib.metadata import version

from prometheus_client import start_http_server

from radreport.model.report import DEFAULT_MODEL_DIR, MODEL_INFO_FILE, ModelInfo
from services.common.blobs import BlobStore
from services.common.logs import configure_logging
from services.common.settings import get_common_settings
from services.common.store import Store
from services.dicom.completion import StudyCompleter
from services.dicom.export import Destination, ResultExporter
from services.dicom.scp import StorageSCP
from services.dicom.settings import get_dicom_settings

log = logging.getLogger(__name__)


def run_loops(completer: StudyCompleter, exporter: ResultExporter, period_s: float,
              stop: threading.Event) -> None:
    """Complete idle studies, fill the outbox, send what is due; until told to stop."""
    while not stop.wait(period_s):
        for step in (completer.complete_due, exporter.enqueue_finished, exporter.send_due):
            try:
                step()
            except Exception:  # one failing step must not stop the others
                log.exception("DICOM gateway loop step failed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the radreport DICOM gateway.")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.loglevel)
    common, settings = get_common_settings(), get_dicom_settings()
    store = Store(common.sqlalchemy_url)
    store.migrate()
    blobs = BlobStore(common.blobs)
    storage = settings.storage_dir or common.data_dir / "dicom"
    model_version = ModelInfo.load(DEFAULT_MODEL_DIR / MODEL_INFO_FILE).model_version
    scp = StorageSCP(settings, store, storage / "instances")
    completer = StudyCompleter(store, blobs, model_version, settings.study_idle_s)
    exporter = ResultExporter(store, blobs, storage / "outbox",
                              [Destination.parse(d) for d in settings.destinations],
                              version("radreport"), settings.ae_title,
                              settings.export_retry_s, settings.export_max_wait_s)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scp.start()
    try:
        run_loops(completer, exporter, settings.poll_s, stop)
    finally:
        scp.stop()
