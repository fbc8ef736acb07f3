from __future__ import annotations

import pytest
import torch
from tiny import tiny_config

from radreport.model.model import RadReportModel, attention_entropy, grounding_loss

B, T, N = 2, 12, 64  # tiny_config: 64-pixel images, 8-pixel patches -> 8x8 grid


def _batch(vocab: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(B, 1, 64, 64), torch.randint(4, vocab, (B, T))


def test_output_shapes(tiny_model: RadReportModel) -> None:
    images, tokens = _batch()
    out = tiny_model(images, tokens)
    assert out.logits.shape == (B, T, 64)
    assert out.label_logits.shape == (B, 14)
    assert out.cross_attn.shape == (B, T, N)  # patches only, CLS excluded
    torch.testing.assert_close(out.cross_attn.sum(-1), torch.ones(B, T))
    assert out.loss is None and out.loss_parts == {}


def test_changing_a_future_token_leaves_earlier_positions_alone(
        tiny_model: RadReportModel) -> None:
    images, tokens = _batch()
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1 - 4) % 60 + 4
    a, b = tiny_model(images, tokens), tiny_model(images, changed)
    torch.testing.assert_close(a.logits[:, :7], b.logits[:, :7])
    torch.testing.assert_close(a.cross_attn[:, :7], b.cross_attn[:, :7])
    assert not torch.allclose(a.logits[:, 7:], b.logits[:, 7:])


def test_grounding_layers_pick_which_maps_are_averaged() -> None:
    images, tokens = _batch()
    maps = {}
    for layers in [(0,), (1,), None]:
        torch.manual_seed(0)
        model = RadReportModel(tiny_config(grounding_layers=layers)).eval()
        maps[layers] = model(images, tokens).cross_attn
    torch.testing.assert_close(maps[None], (maps[(0,)] + maps[(1,)]) / 2)


def test_tied_and_untied_output_layers() -> None:
    tied = RadReportModel(tiny_config())
    untied = RadReportModel(tiny_config(tie_weights=False))
    assert tied.decoder.lm_head.weight is tied.decoder.tok_emb.weight
    assert untied.decoder.lm_head.weight is not untied.decoder.tok_emb.weight
    assert untied.num_params() == tied.num_params() + 64 * 32


def test_mismatched_image_size_names_both_sizes(tiny_model: RadReportModel) -> None:
    with pytest.raises(ValueError, match=r"image size 32x32 .* config.image_size 64x64"):
        tiny_model(torch.rand(1, 1, 32, 32), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(1, 3, 64, 64\) .* \(B, 1, H, W\)"):
        tiny_model(torch.rand(1, 3, 64, 64), torch.ones(1, 3, dtype=torch.long))


def test_other_mismatches_name_both_shapes(tiny_model: RadReportModel) -> None:
    images, tokens = _batch()
    with pytest.raises(ValueError, match=r"targets has shape \(2, 11\), expected \(2, 12\)"):
        tiny_model(images, tokens, targets=tokens[:, 1:])
    with pytest.raises(ValueError, match=r"region_masks has shape \(2, 12, 16\), expected"):
        tiny_model(images, tokens, targets=tokens, region_masks=torch.zeros(B, T, 16),
                   finding_token_mask=torch.zeros(B, T, dtype=torch.bool))
    with pytest.raises(ValueError, match="sequence length 161 exceeds max_len 160"):
        tiny_model(images, torch.ones(1, 161, dtype=torch.long))


def test_loss_parts_are_finite_and_weighted(tiny_model: RadReportModel) -> None:
    images, tokens = _batch()
    targets = tokens.roll(-1, dims=1)
    targets[:, -3:] = 0  # PAD is ignored
    masks = torch.zeros(B, T, N)
    masks[:, :, :8] = 1.0
    finding = torch.zeros(B, T, dtype=torch.bool)
    finding[:, 2:5] = True
    labels = torch.randint(0, 2, (B, 14)).float()
    out = tiny_model(images, tokens, targets, masks, finding, labels)
    assert set(out.loss_parts) == {"lm", "ground", "entropy", "label", "query"}
    assert out.loss_parts.pop("query") == 0  # v1 has no queries
    assert all(torch.isfinite(v) and v > 0 for v in out.loss_parts.values())
    p, cfg = out.loss_parts, tiny_model.config
    expected = (p["lm"] + cfg.lambda_ground * p["ground"] + cfg.lambda_entropy * p["entropy"]
                + cfg.lambda_label * p["label"])
    assert out.loss is not None
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()


def test_grounding_loss_is_zero_when_attention_matches_the_region() -> None:
    masks = torch.zeros(1, 2, 4)
    masks[0, :, :2] = torch.tensor([1.0, 0.5])
    on_region = masks / masks.sum(-1, keepdim=True)
    token_mask = torch.tensor([[True, False]])
    assert grounding_loss(on_region, masks, token_mask).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((1, 2, 4), 0.25)
    assert grounding_loss(uniform, masks, token_mask).item() > 0.1
    # Tokens with empty regions, or none flagged, contribute nothing.
    assert grounding_loss(uniform, torch.zeros(1, 2, 4), token_mask).item() == 0.0


def test_attention_entropy_is_normalised() -> None:
    valid = torch.ones(1, 1, dtype=torch.bool)
    uniform, peaked = torch.full((1, 1, 16), 1 / 16), torch.eye(16)[:1][None]
    assert attention_entropy(uniform, valid).item() == pytest.approx(1.0)
    assert attention_entropy(peaked, valid).item() == pytest.approx(0.0)
