"""Audit records go to the append-only table and, when configured, to a syslog collector."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

from services.common.logs import forward_audit_to_syslog
from services.common.store import Store


def test_an_audit_record_reaches_the_syslog_collector(tmp_path: Path) -> None:
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(5)
    audit = logging.getLogger("radreport.audit")
    audit.setLevel(logging.INFO)
    forward_audit_to_syslog(f"127.0.0.1:{collector.getsockname()[1]}")
    try:
        store = Store(f"sqlite:///{tmp_path / 'r.db'}")
        store.migrate()
        store.audit("dr-house", "sign", "report", "RPT-1", "success", "10.1.2.3")
        line = collector.recv(4096).decode()
    finally:
        for handler in list(audit.handlers):
            audit.removeHandler(handler)
        collector.close()
    assert "radreport-audit:" in line
    record = json.loads(line.split("radreport-audit: ", 1)[1].rstrip("\x00"))
    assert (record["actor"], record["action"], record["resource_id"], record["outcome"]) == (
        "dr-house", "sign", "RPT-1", "success")
    assert len(store.audit_events("RPT-1")) == 1
