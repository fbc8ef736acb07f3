"""Tiny model configs for fast CPU tests; pytest puts this folder on the path."""

from __future__ import annotations

import torch

from radreport.model.config import ModelConfig
from radreport.model.model import RadReportModel
from radreport.model.prompt import PROMPT_LEN


def tiny_config(vocab_size: int = 64, **overrides: object) -> ModelConfig:
    """64-pixel images, 8x8 grid of patches, one encoder and two decoder layers."""
    params: dict[str, object] = dict(
        vocab_size=vocab_size, image_size=64, patch=8, enc_depth=1, enc_width=32, enc_heads=2,
        dec_depth=2, dec_width=32, dec_heads=2, max_len=160,
    )
    params.update(overrides)
    return ModelConfig.from_dict(params)


def tiny_v2() -> RadReportModel:
    """A seeded v2 (chexquery) model at 64 px: a 4 x 4 patch grid, 16 x 16 fine maps."""
    torch.manual_seed(0)
    return RadReportModel(ModelConfig(
        vocab_size=64, arch="chexquery", image_size=64, patch=16,
        conv_channels=(4, 8, 8, 16, 16), enc_width=16, enc_heads=2, query_layers=1,
        dec_depth=1, dec_width=16, dec_heads=2, prompt_len=PROMPT_LEN,
        max_len=PROMPT_LEN + 40))
