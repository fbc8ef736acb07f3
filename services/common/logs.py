"""Structured logs: one JSON object per line, ids only (no PHI ever goes into a message)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
                 "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def forward_audit_to_syslog(address: str) -> None:
    """Send every audit record to a syslog collector (``host:port``, UDP; IHE ATNA-style
    transport, RFC 5424 framing left to the collector)."""
    host, _, port = address.rpartition(":")
    handler = logging.handlers.SysLogHandler(address=(host, int(port)),
                                             facility=logging.handlers.SysLogHandler.LOG_AUTH)
    handler.setFormatter(logging.Formatter("radreport-audit: %(message)s"))
    logging.getLogger("radreport.audit").addHandler(handler)
