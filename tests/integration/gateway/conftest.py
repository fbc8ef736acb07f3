"""The running stack for the gateway tests, one per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from radreport.stack import LocalStack, StackConfig


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(StackConfig.on_free_ports(tmp_path_factory.mktemp("gateway"))) as running:
        yield running
