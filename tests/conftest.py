"""Fixtures every test folder may use."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import pytest

from services.common.logs import configure_logging


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The services' JSON logging, configured as they configure it, written to a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, warnings.showwarning
    configure_logging("INFO")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        warnings.showwarning = saved[2]
