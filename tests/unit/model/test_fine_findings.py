"""The fine detection head experiment: shapes, its starting point and its loss."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny import tiny_v2

from radreport.model.fine_findings import (
    FindingHeadConfig,
    FineFindingHead,
    finding_loss,
    load_head,
    save_head,
)
from radreport.model.fine_grounding import frozen_encoder, frozen_inputs


def test_head_maps_and_study_logits(tmp_path: Path) -> None:
    encoder = frozen_encoder(tiny_v2())
    head = FineFindingHead(FindingHeadConfig(c4=8, c8=8, fine_grid=16)).eval()
    images = torch.rand(3, 1, 64, 64)
    maps, study = head(images, frozen_inputs(encoder, images))
    assert maps.shape == (3, 2, 16, 16) and study.shape == (3, 2)
    torch.testing.assert_close(study, torch.full((3, 2), -2.0))  # rare findings at the start
    save_head(head, tmp_path, {"note": "test"})
    torch.testing.assert_close(load_head(tmp_path)(images, frozen_inputs(encoder, images))[1],
                               study)


def test_loss_rewards_the_masked_cells_and_the_study_label() -> None:
    maps = torch.full((2, 1, 4, 4), -8.0)
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, 0, 1, 1] = 1.0
    labels = torch.tensor([[1.0], [0.0]])
    study = torch.logsumexp(maps.flatten(2), dim=-1)
    before = finding_loss(maps, study, masks, labels)
    maps[0, 0, 1, 1] = 4.0  # the positive study's masked cell lights up
    after = finding_loss(maps, torch.logsumexp(maps.flatten(2), dim=-1), masks, labels)
    assert float(after) < float(before)
    unmasked = finding_loss(maps, study, torch.zeros_like(masks), labels)  # no region: study only
    assert torch.isfinite(unmasked)
