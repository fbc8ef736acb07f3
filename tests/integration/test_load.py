"""R13, the fast version: twice the nominal rate for 60 s against the running stack. Every
study is accepted and reported exactly once, the stage queues stay shallow, and no process
keeps growing. ``radreport bench load`` runs the 10-minute figure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from radreport.bench.load import NOMINAL_PER_S, run_load, studies_for_load
from radreport.stack import LocalStack, StackConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(StackConfig.on_free_ports(tmp_path_factory.mktemp("load"))) as running:
        yield running


def test_twice_the_nominal_rate_for_a_minute(stack: LocalStack, tmp_path: Path) -> None:
    result = run_load(stack, studies_for_load(tmp_path, 4), 2 * NOMINAL_PER_S, 60,
                      warmup_s=20)
    assert result.sent >= 14
    assert result.errors == []
    assert (result.completed_once, result.unfinished) == (result.sent, 0)
    assert result.max_queue <= 10, result.max_queue  # the stack keeps up: no backlog
    assert result.memory_growth_mb <= 100, result.rss_mb
