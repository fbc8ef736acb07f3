"""Shared, session-scoped fixtures: phantom reports, a tokenizer and tiny model configs."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_config

from radreport.model.data import phantom_report_texts
from radreport.model.model import RadReportModel
from radreport.model.tokenizer import ReportTokenizer


@pytest.fixture(scope="session")
def report_texts() -> list[str]:
    return phantom_report_texts(range(200))


@pytest.fixture(scope="session")
def tokenizer(report_texts: list[str]) -> ReportTokenizer:
    return ReportTokenizer.train(report_texts)


@pytest.fixture()
def tiny_model() -> RadReportModel:
    torch.manual_seed(0)
    return RadReportModel(tiny_config()).eval()
