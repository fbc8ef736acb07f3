"""A pretrained GPT-2-style language model, from a local Hugging Face folder, as the decoder.

Seed 000's baseline and seed 001 start the report writer from a pretrained causal language
model with cross-attention added. Our ``TextDecoder`` is a GPT-2 block for block (pre-norm
self-attention, cross-attention and MLP, learned positions, tied head), so the folder's
weights are copied into it rather than running Hugging Face modules: export, the KV cache,
the grounding maps (our cross-attention weights), the ONNX graphs and Triton stay as
they are, and a checkpoint rebuilds from ``ModelConfig`` without the folder.

- ``config.json`` must describe a GPT-2 (``model_type`` gpt2): its depth, width and heads
  must equal ``dec_depth``/``dec_width``/``dec_heads``, its MLP ``mlp_ratio`` times the
  width, its activation ``dec_activation`` (``gelu_new`` is ``"gelu_tanh"``);
- weights come from ``model.safetensors`` (or its shards, or ``pytorch_model.bin``), read
  as tensors only; cross-attention missing from the file (a plain GPT-2) starts fresh, as
  in Hugging Face's VisionEncoderDecoder;
- the vocabulary: the report model writes with our word tokenizer (the one its model folder
  ships and the Triton backend and ``radreport draft`` serve). Each of our words starts from
  the mean of the pretrained embeddings of its pieces under the folder's ``tokenizer.json``
  (the word with a leading space, as GPT-2 sees it mid-sentence); words it cannot split,
  and special tokens, keep their fresh initialisation. With ``words=None`` and the same
  vocabulary size the embedding is copied as is (the folder's own token ids).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from radreport.model.config import ModelConfig
from radreport.model.model import TextDecoder

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
# Our decoder block's parameter -> GPT-2's (Conv1D weights are (in, out): transposed).
BLOCK_MAP = {
    "ln1": "ln_1", "self_attn.qkv": "attn.c_attn", "self_attn.proj": "attn.c_proj",
    "ln2": "ln_cross_attn", "cross_attn.q": "crossattention.q_attn",
    "cross_attn.kv": "crossattention.c_attn", "cross_attn.proj": "crossattention.c_proj",
    "ln3": "ln_2", "mlp.fc": "mlp.c_fc", "mlp.out": "mlp.c_proj",
}
LAYER_NORMS = frozenset({"ln1", "ln2", "ln3"})


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (a Hugging Face model folder)")
    config: dict[str, Any] = json.loads(path.read_text())
    return config


def check_compatible(cfg: ModelConfig, hf: dict[str, Any]) -> None:
    """The folder's GPT-2 must be the decoder ``cfg`` describes; mismatches name both."""
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"decoder_path holds a {hf.get('model_type')!r} model; only GPT-2-style "
                         "models (model_type gpt2) are supported")
    width = hf["n_embd"]
    pairs = {"dec_depth": (cfg.dec_depth, hf["n_layer"]),
             "dec_width": (cfg.dec_width, width), "dec_heads": (cfg.dec_heads, hf["n_head"]),
             "mlp_ratio * dec_width": (cfg.mlp_ratio * cfg.dec_width,
                                       hf.get("n_inner") or 4 * width),
             "dec_activation": (cfg.dec_activation,
                                ACTIVATIONS.get(hf.get("activation_function", "gelu_new"))),
             "layer norm epsilon": (1e-5, hf.get("layer_norm_epsilon", 1e-5))}
    bad = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if bad:
        raise ValueError("the model config does not match the decoder folder "
                         f"(ours, theirs): {bad}")
    if cfg.max_len > hf.get("n_positions", 1024):
        raise ValueError(f"max_len {cfg.max_len} exceeds the folder's n_positions "
                         f"{hf.get('n_positions')}")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ValueError("GPT-2 attention variants (scale_attn_by_inverse_layer_idx, "
                         "reorder_and_upcast_attn) are not supported")


def read_hf_weights(folder: str | Path) -> dict[str, Tensor]:
    """The folder's tensors (never pickled code), ``transformer.`` prefix removed."""
    folder = Path(folder)
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    state: dict[str, Tensor] = {}
    if (folder / "model.safetensors").is_file():
        state = load_file(str(folder / "model.safetensors"))
    elif index.is_file():
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder} has no model.safetensors or pytorch_model.bin")
    return {k.removeprefix("transformer."): v for k, v in state.items()}


def load_hf_decoder(decoder: TextDecoder, folder: str | Path,
                    words: Sequence[str] | None = None) -> list[str]:
    """Copy the folder's GPT-2 into ``decoder``; returns the names left at their fresh
    initialisation (cross-attention of a plain GPT-2, words without pieces)."""
    cfg = decoder.cfg
    check_compatible(cfg, read_hf_config(folder))
    theirs = read_hf_weights(folder)
    fresh: list[str] = []
    with torch.no_grad():
        for i, block in enumerate(decoder.blocks):
            for ours, name in BLOCK_MAP.items():
                module = cast(nn.Linear, block.get_submodule(ours))  # or a LayerNorm
                key = f"h.{i}.{name}"
                if f"{key}.weight" not in theirs:
                    fresh.append(f"blocks.{i}.{ours}")
                    continue
                weight = theirs[f"{key}.weight"]
                module.weight.copy_(weight if ours in LAYER_NORMS else weight.T)
                module.bias.copy_(theirs[f"{key}.bias"])
        decoder.pos_emb.weight.copy_(theirs["wpe.weight"][: cfg.max_len])
        decoder.ln_f.weight.copy_(theirs["ln_f.weight"])
        decoder.ln_f.bias.copy_(theirs["ln_f.bias"])
        fresh += _token_embeddings(decoder, theirs["wte.weight"], folder, words)
    missing_core = [f for f in fresh if not f.endswith(("cross_attn.q", "cross_attn.kv",
                                                        "cross_attn.proj", "ln2"))
                    and f.startswith("blocks.")]
    if missing_core:
        raise ValueError(f"{folder} lacks decoder weights: {missing_core[:3]}")
    return fresh


def _token_embeddings(decoder: TextDecoder, wte: Tensor, folder: str | Path,
                      words: Sequence[str] | None) -> list[str]:
    emb = decoder.tok_emb.weight  # tied to lm_head when tie_weights
    if words is None:
        if wte.shape != emb.shape:
            raise ValueError(f"token embedding {tuple(wte.shape)} in the folder, "
                             f"{tuple(emb.shape)} in the model: pass the vocabulary's words")
        emb.copy_(wte)
        return []
    if len(words) != emb.size(0):
        raise ValueError(f"{len(words)} words for a vocabulary of {emb.size(0)}")
    pieces = _piece_ids(folder, words)
    fresh: list[str] = []
    for i, ids in enumerate(pieces):
        ids = [j for j in ids if j < wte.size(0)]
        if ids:
            emb[i] = wte[ids].mean(dim=0)
        else:
            fresh.append(f"token {i}")
    return fresh


def _piece_ids(folder: str | Path, words: Sequence[str]) -> list[list[int]]:
    """The folder tokenizer's ids for " word"; none for special tokens like ``[BOS]``."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return [[] for _ in words]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    return [[] if w.startswith("[") and w.endswith("]")
            else tok.encode(" " + w, add_special_tokens=False).ids for w in words]
