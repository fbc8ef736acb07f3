from __future__ import annotations

import io
import json

import pytest
import torch
from tiny import tiny_config

from radreport.model.config import ModelConfig
from radreport.model.model import RadReportModel


def test_defaults_follow_the_design() -> None:
    cfg = ModelConfig(vocab_size=100)
    assert (cfg.image_size, cfg.patch, cfg.n_patches, cfg.n_labels) == (256, 16, 256, 14)
    assert cfg.grounding_layer_indices == (0, 1, 2)


def test_round_trip_through_json() -> None:
    cfg = tiny_config(grounding_layers=(1,), dropout=0.1, tie_weights=False)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.grounding_layers == (1,)


@pytest.mark.parametrize("layers", [(), (2,), (-1,)])
def test_grounding_layers_must_exist(layers: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="grounding_layers"):
        tiny_config(grounding_layers=layers)


def test_unknown_keys_and_bad_sizes_fail_loudly() -> None:
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({"vocab_size": 10, "n_layer": 3})
    with pytest.raises(ValueError, match=r"image_size 60 .* patch 16"):
        ModelConfig(vocab_size=10, image_size=60)
    with pytest.raises(ValueError, match=r"dec_width 30 .* dec_heads 4"):
        ModelConfig(vocab_size=10, dec_width=30, dec_heads=4)


def test_checkpoint_rebuilds_the_same_model() -> None:
    torch.manual_seed(0)
    model = RadReportModel(tiny_config(grounding_layers=(0,))).eval()
    buffer = io.BytesIO()
    torch.save(model.checkpoint(step=7), buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    again = RadReportModel.from_checkpoint(checkpoint).eval()
    assert checkpoint["step"] == 7 and again.config == model.config
    images, tokens = torch.rand(1, 1, 64, 64), torch.randint(4, 64, (1, 9))
    torch.testing.assert_close(again(images, tokens).logits, model(images, tokens).logits)
