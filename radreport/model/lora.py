"""LoRA (peft) on the decoder's pretrained layers, merged away when a checkpoint is read.

Seeds 001, 003 and 004 adapt a pretrained language model with low-rank updates instead of
training all of it. ``add_lora`` wraps the decoder blocks' self-attention and MLP Linears
(the layers a GPT-2 brings; cross-attention is new and trains in full) with peft's LoRA:
their pretrained weights stay fixed, everything else keeps its ``requires_grad``.

Training checkpoints hold peft's keys (``qkv.base_layer.weight``, ``qkv.lora_A.default.
weight``, ...) so a resumed run finds its adapters and their optimizer state. Each wrapped
Linear also stores its scale (alpha / rank) as the buffer ``lora_scale``, so
``merge_lora`` turns such a state dict back into plain ``weight = W + scale * B @ A`` keys
without knowing the run's config: ``RadReportModel.from_checkpoint`` does this, and model
folders, ONNX graphs and serving never see an adapter.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

LORA_TARGETS = r"decoder\.blocks\.\d+\.(self_attn\.(qkv|proj)|mlp\.(fc|out))"
BASE, SCALE = ".base_layer.", ".lora_scale"
A_KEY, B_KEY = ".lora_A.default.weight", ".lora_B.default.weight"


def add_lora(model: nn.Module, rank: int, alpha: int, dropout: float = 0.0) -> list[str]:
    """Wrap the decoder's self-attention and MLP Linears; returns the wrapped names."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"LoRA rank {rank} must be at least 1")
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=LORA_TARGETS, bias="none")
    inject_adapter_in_model(config, model)
    wrapped = [name for name, m in model.named_modules() if hasattr(m, "base_layer")]
    if not wrapped:
        raise ValueError("no decoder layer matched the LoRA targets")
    for name in wrapped:
        module = model.get_submodule(name)
        module.register_buffer("lora_scale", torch.tensor(alpha / rank))
    for name, p in model.named_parameters():  # peft froze everything but the adapters
        adapter = ".lora_" in name
        p.requires_grad_(adapter or (id(p) in trainable and BASE not in name))
    return wrapped


def merge_lora(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict with peft LoRA keys -> plain keys with the updates merged in."""
    prefixes = [k[: -len(SCALE)] for k in state if k.endswith(SCALE)]
    if not prefixes:
        return state
    merged = dict(state)
    for prefix in prefixes:
        a, b = merged.pop(prefix + A_KEY), merged.pop(prefix + B_KEY)
        scale = merged.pop(prefix + SCALE)
        weight = merged.pop(f"{prefix}{BASE}weight")
        merged[f"{prefix}.weight"] = weight + scale.to(weight.dtype) * (b @ a).to(weight.dtype)
        if f"{prefix}{BASE}bias" in merged:
            merged[f"{prefix}.bias"] = merged.pop(f"{prefix}{BASE}bias")
    return merged
