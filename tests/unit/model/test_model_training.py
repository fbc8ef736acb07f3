from __future__ import annotations

import math

import torch
from tiny import tiny_config
from torch.utils.data import default_collate

from radreport.model.cache import PhantomReportDataset
from radreport.model.model import RadReportModel
from radreport.model.tokenizer import ReportTokenizer


def test_overfits_four_phantom_studies(tokenizer: ReportTokenizer) -> None:
    """30 Adam steps (lr 1e-3) on one batch of 4 studies: every part finite, all fall."""
    config = tiny_config(tokenizer.vocab_size, enc_width=64, dec_width=64)
    dataset = PhantomReportDataset([0, 1, 4, 5], tokenizer, config)
    batch = default_collate([dataset[i] for i in range(len(dataset))])
    torch.manual_seed(0)
    model = RadReportModel(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history: list[dict[str, float]] = []
    for _ in range(30):
        out = model(**batch)
        assert out.loss is not None
        parts = {name: value.item() for name, value in out.loss_parts.items()}
        assert all(math.isfinite(v) for v in [out.loss.item(), *parts.values()]), parts
        history.append({"total": out.loss.item(), **parts})
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    first, last = history[0], history[-1]
    assert last["total"] < 0.7 * first["total"], (first, last)
    assert last["lm"] < 0.7 * first["lm"]
    assert last["ground"] < first["ground"] and last["label"] < first["label"]
