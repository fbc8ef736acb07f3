"""Tiny model configs for fast CPU tests; pytest puts this folder on the path."""

from __future__ import annotations

from radreport.model.config import ModelConfig


def tiny_config(vocab_size: int = 64, **overrides: object) -> ModelConfig:
    """64-pixel images, 8x8 grid of patches, one encoder and two decoder layers."""
    params: dict[str, object] = dict(
        vocab_size=vocab_size, image_size=64, patch=8, enc_depth=1, enc_width=32, enc_heads=2,
        dec_depth=2, dec_width=32, dec_heads=2, max_len=160,
    )
    params.update(overrides)
    return ModelConfig.from_dict(params)
