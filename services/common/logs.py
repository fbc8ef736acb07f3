"""Structured logs: one JSON object per line, and no patient data in any of them.

Our own code logs ids only. Libraries do not promise that: pydicom's validation warnings
quote the offending value, which for a UID with a bad length runs on into the raw bytes of
the elements after it (referring physician, patient name, birth date), and pynetdicom
quotes values it refuses. So a record from a library keeps its ``%``-style template but
never its arguments, a message it formatted itself (an f-string: data and text cannot be
told apart) is withheld, and an exception is named by its type and the line that raised
it, never by its message. Python warnings take the same road instead of raw stderr.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import traceback
import warnings
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TextIO

# Loggers whose arguments are ours (ids, states, counts) or carry no dataset content.
# Celery is not among them: its task lines quote return values and exception reprs.
TRUSTED_LOGGERS = ("services", "radreport", "alembic", "uvicorn")
WITHHELD = "[library message withheld: it may quote patient data]"
WARNINGS_LOGGER = "radreport.warnings"


def is_trusted(logger_name: str) -> bool:
    return any(logger_name == name or logger_name.startswith(name + ".")
               for name in TRUSTED_LOGGERS)


def safe_message(record: logging.LogRecord) -> str:
    """The record's text if its logger is trusted, else its template without arguments."""
    if is_trusted(record.name):
        return record.getMessage()
    if record.args and isinstance(record.msg, str):
        return record.msg
    return WITHHELD


def exception_summary(exc_info: tuple[type[BaseException], BaseException,
                                      TracebackType | None]) -> str:
    """``TypeName at file.py:line`` of the innermost frame: where, never what it quoted."""
    kind, _, tb = exc_info
    frames = traceback.extract_tb(tb)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{kind.__name__}{where}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
                 "level": record.levelname, "logger": record.name,
                 "message": safe_message(record)}
        if not is_trusted(record.name):
            entry["source"] = f"{Path(record.pathname).name}:{record.lineno}"
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = exception_summary(record.exc_info)
        return json.dumps(entry)


def log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` that logs the category and place, not the warning's text."""
    logging.getLogger(WARNINGS_LOGGER).warning(
        "%s from %s:%d", category.__name__, Path(filename).name, lineno)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries with handlers of their own would write around the JSON handler.
    for name in ("pydicom", "pynetdicom"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    warnings.showwarning = log_warning


def forward_audit_to_syslog(address: str) -> None:
    """Send every audit record to a syslog collector (``host:port``, UDP; IHE ATNA-style
    transport, RFC 5424 framing left to the collector)."""
    host, _, port = address.rpartition(":")
    handler = logging.handlers.SysLogHandler(address=(host, int(port)),
                                             facility=logging.handlers.SysLogHandler.LOG_AUTH)
    handler.setFormatter(logging.Formatter("radreport-audit: %(message)s"))
    logging.getLogger("radreport.audit").addHandler(handler)
