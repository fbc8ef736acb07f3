"""Grounded report model: a ViT reads the radiograph, a Transformer decoder writes the report.

The decoder reads the image only through cross-attention onto the encoder's patch tokens
(never the CLS token), so each generated word's cross-attention over patches is evidence
of where in the image it comes from; training adds a loss that pulls the attention of
finding words onto their sentence's region. The CLS token feeds a 14-way multi-label
head. Attention is written out (softmax(QK^T/sqrt(d))V) because the weights are an output,
and ``forward`` has no data-dependent control flow besides "is there a KV cache", which
keeps it traceable for ONNX later.

Shapes: B batch, T tokens, S cached tokens, N patches, C width, h heads, d = C / h.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radreport.model.chexquery import CheXQueryEncoder, region_kl
from radreport.model.config import ModelConfig
from radreport.model.fine_head import FineGroundingHead, head_config
from radreport.model.lora import merge_lora

KV = tuple[Tensor, Tensor]  # keys, values: (B, h, S, d) each


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(d)) v, returning the weights too. mask: True = may attend."""
    # q (B, h, T, d), k/v (B, h, S, d)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, h, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)  # (B, h, T, S)
    return weights @ v, weights  # (B, h, T, d), (B, h, T, S)


def split_heads(x: Tensor, heads: int) -> Tensor:
    b, t, c = x.shape
    return x.view(b, t, heads, c // heads).transpose(1, 2)  # (B, h, T, d)


def merge_heads(x: Tensor) -> Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)  # (B, T, C)


class SelfAttention(nn.Module):
    """Multi-head self-attention; causal with an incremental KV cache in the decoder."""

    def __init__(self, width: int, heads: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: KV | None = None) -> tuple[Tensor, KV]:
        # x (B, T, C); cache: keys/values of the S earlier positions
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)  # (B, h, S+T, d)
            v = torch.cat([cache[1], v], dim=2)
        mask = causal_mask(q.size(2), k.size(2), x.device) if self.causal else None
        y, _ = attend(q, k, v, mask)
        return self.drop(self.proj(merge_heads(y))), (k, v)


def causal_mask(t: int, total: int, device: torch.device) -> Tensor:
    """(T, S+T) bool: query i (absolute position S+i) sees keys 0..S+i."""
    return torch.ones(t, total, dtype=torch.bool, device=device).tril(diagonal=total - t)


class CrossAttention(nn.Module):
    """Text queries attend to image patches; keys/values are computed once per image."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def memory_kv(self, memory: Tensor) -> KV:
        # memory (B, N, C) -> keys, values (B, h, N, d)
        k, v = self.kv(memory).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, x: Tensor, memory_kv: KV) -> tuple[Tensor, Tensor]:
        # x (B, T, C) -> out (B, T, C), weights (B, h, T, N)
        q = split_heads(self.q(x), self.heads)
        y, weights = attend(q, memory_kv[0], memory_kv[1])
        return self.drop(self.proj(merge_heads(y))), weights


class MLP(nn.Module):
    def __init__(self, width: int, ratio: int, dropout: float, activation: str = "gelu") -> None:
        super().__init__()
        self.fc = nn.Linear(width, ratio * width)
        self.out = nn.Linear(ratio * width, width)
        self.drop = nn.Dropout(dropout)
        self.approximate = "tanh" if activation == "gelu_tanh" else "none"  # GPT-2: tanh

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.out(F.gelu(self.fc(x), approximate=self.approximate)))


class EncoderBlock(nn.Module):
    """Pre-norm ViT block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.enc_width)
        self.attn = SelfAttention(cfg.enc_width, cfg.enc_heads, cfg.dropout, causal=False)
        self.ln2 = nn.LayerNorm(cfg.enc_width)
        self.mlp = MLP(cfg.enc_width, cfg.mlp_ratio, cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))[0]
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: masked self-attention, cross-attention to patches, MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dec_width)
        self.self_attn = SelfAttention(cfg.dec_width, cfg.dec_heads, cfg.dropout, causal=True)
        self.ln2 = nn.LayerNorm(cfg.dec_width)
        self.cross_attn = CrossAttention(cfg.dec_width, cfg.dec_heads, cfg.dropout)
        self.ln3 = nn.LayerNorm(cfg.dec_width)
        self.mlp = MLP(cfg.dec_width, cfg.mlp_ratio, cfg.dropout, cfg.dec_activation)

    def forward(self, x: Tensor, memory_kv: KV, cache: KV | None) -> tuple[Tensor, Tensor, KV]:
        # x (B, T, C) -> x (B, T, C), cross weights (B, h, T, N), self-attn cache
        y, new_cache = self.self_attn(self.ln1(x), cache)
        x = x + y
        y, weights = self.cross_attn(self.ln2(x), memory_kv)
        x = x + y
        return x + self.mlp(self.ln3(x)), weights, new_cache


class ImageEncoder(nn.Module):
    """ViT over a grayscale radiograph: 16x16 patches, a CLS token, learned positions."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.enc_width, cfg.patch, stride=cfg.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.enc_width))
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.n_patches + 1, cfg.enc_width))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.enc_depth))
        self.ln_f = nn.LayerNorm(cfg.enc_width)

    def forward(self, images: Tensor) -> Tensor:
        # images (B, 1, H, W) -> tokens (B, 1 + N, C); token 0 is CLS, patches row-major
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.cls.expand(x.size(0), -1, -1), x], dim=1)
        x = self.drop(x + self.pos_emb)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)


@dataclass
class DecoderStep:
    logits: Tensor  # (B, T, V)
    cross_attn: Tensor  # (B, T, N): mean over heads and grounding layers
    cache: list[KV]  # per layer, keys/values of all positions so far


class TextDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dec_width)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dec_width)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.dec_depth))
        self.ln_f = nn.LayerNorm(cfg.dec_width)
        self.lm_head = nn.Linear(cfg.dec_width, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight

    def forward(self, tokens: Tensor, memory_kv: list[KV],
                cache: list[KV] | None = None) -> DecoderStep:
        # tokens (B, T) -> logits (B, T, V); positions continue after the cache's S
        start = 0 if cache is None else cache[0][0].size(2)
        if start + tokens.size(1) > self.cfg.max_len:
            raise ValueError(
                f"sequence length {start + tokens.size(1)} exceeds max_len {self.cfg.max_len}"
            )
        pos = torch.arange(start, start + tokens.size(1), device=tokens.device)
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(pos))  # (B, T, C)
        new_cache: list[KV] = []
        layer_weights: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            x, weights, kv = block(x, memory_kv[i], None if cache is None else cache[i])
            new_cache.append(kv)
            layer_weights.append(weights.mean(dim=1))  # (B, T, prefix + N)
        grounding = torch.stack([layer_weights[i] for i in self.cfg.grounding_layer_indices])
        return DecoderStep(self.lm_head(self.ln_f(x)), patch_map(grounding.mean(dim=0),
                                                                 self.cfg.memory_prefix),
                           new_cache)


def patch_map(weights: Tensor, prefix: int) -> Tensor:
    """Cross-attention over the patches alone, renormalised: memory tokens in front of the
    patches (v2's fused global token) are evidence of nothing in particular, so no map
    shows them."""
    if prefix == 0:
        return weights
    patches = weights[..., prefix:]
    return patches / patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass
class ImageFeatures:
    memory: Tensor  # (B, prefix + N, C_dec): projected memory tokens (no CLS)
    label_logits: Tensor  # (B, n_labels)
    pooled: Tensor  # (B, C_enc): the study's feature vector (CLS or mean patch)
    query_attn: Tensor | None = None  # (B, Q, N) v2 query attention
    fine_query_attn: Tensor | None = None  # (B, Q + D, (S/4)^2) the fine head's maps


@dataclass
class ModelOutput:
    logits: Tensor  # (B, T, V)
    label_logits: Tensor  # (B, n_labels)
    cross_attn: Tensor  # (B, T, N): where the word predicted at position t looked
    query_attn: Tensor | None = None  # (B, Q, N) v2 condition and anatomy queries
    loss: Tensor | None = None
    loss_parts: dict[str, Tensor] = field(default_factory=dict)


def projector(cfg: ModelConfig) -> nn.Module:
    """Encoder features (C_enc) -> decoder width: one Linear, or seed 001's two-layer GELU
    MLP, which gives pretrained encoder and decoder spaces a non-linear bridge."""
    if cfg.projector == "mlp2":
        return nn.Sequential(nn.Linear(cfg.enc_width, cfg.dec_width), nn.GELU(),
                             nn.Linear(cfg.dec_width, cfg.dec_width))
    return nn.Linear(cfg.enc_width, cfg.dec_width)


class RadReportModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder: ImageEncoder | CheXQueryEncoder
        if config.arch == "chexquery":
            self.encoder = CheXQueryEncoder(config)
        else:
            self.encoder = ImageEncoder(config)
            self.label_head = nn.Linear(config.enc_width, config.n_labels)
        self.proj = projector(config)
        self.decoder = TextDecoder(config)
        self.apply(_init_weights)
        self.fine_head = FineGroundingHead(head_config(config)) if config.fine_head else None
        if isinstance(self.encoder, ImageEncoder):
            nn.init.normal_(self.encoder.cls, std=0.02)
        else:
            nn.init.normal_(self.encoder.queries, std=0.02)
            nn.init.normal_(self.encoder.label_weight, std=0.02)
        nn.init.normal_(self.encoder.pos_emb if isinstance(self.encoder, ImageEncoder)
                        else self.encoder.cnn.pos_emb, std=0.02)

    # --- pieces, for decoding -----------------------------------------------------------

    def encode(self, images: Tensor) -> ImageFeatures:
        """Memory for the decoder, label logits and the study's feature vector."""
        self._check_images(images)
        if isinstance(self.encoder, CheXQueryEncoder):
            q = self.encoder(images, fine=self.fine_head is not None)
            memory = self.proj(torch.cat([q.fused, q.patches], dim=1))
            fine = None if self.fine_head is None or q.fine is None else self.fine_head(q.fine)
            return ImageFeatures(memory, q.label_logits, q.pooled, q.query_attn, fine)
        x = self.encoder(images)  # (B, 1 + N, C_enc)
        return ImageFeatures(self.proj(x[:, 1:]), self.label_head(x[:, 0]), x[:, 0])

    def memory_kv(self, memory: Tensor) -> list[KV]:
        """Cross-attention keys/values of every decoder layer, computed once per image."""
        blocks = (cast(DecoderBlock, block) for block in self.decoder.blocks)
        return [block.cross_attn.memory_kv(memory) for block in blocks]

    def decode(self, tokens: Tensor, memory_kv: list[KV],
               cache: list[KV] | None = None) -> DecoderStep:
        step: DecoderStep = self.decoder(tokens, memory_kv, cache)
        return step

    # --- training -----------------------------------------------------------------------

    def forward(
        self,
        images: Tensor,
        tokens: Tensor,
        targets: Tensor | None = None,
        region_masks: Tensor | None = None,
        finding_token_mask: Tensor | None = None,
        label_targets: Tensor | None = None,
        query_masks: Tensor | None = None,
        query_weight: Tensor | None = None,
    ) -> ModelOutput:
        """Teacher-forced pass; position t of ``targets``/``region_masks`` is the word
        predicted from ``tokens[:, :t+1]``, i.e. ``targets = ids[1:]`` for ``tokens = ids[:-1]``.
        ``query_masks`` (B, Q, N) are the v2 queries' regions, used where ``query_weight``
        (B, Q) is positive and the mask is not empty.
        """
        feats = self.encode(images)
        step = self.decode(tokens, self.memory_kv(feats.memory))
        out = ModelOutput(step.logits, feats.label_logits, step.cross_attn, feats.query_attn)
        if targets is not None:
            _check_shape("targets", targets, tuple(tokens.shape))
            out.loss_parts = self.loss_parts(out, targets, region_masks, finding_token_mask,
                                             label_targets)
            out.loss_parts["query"] = out.logits.new_zeros(())
            if (out.query_attn is not None and query_masks is not None
                    and query_weight is not None):
                _check_shape("query_masks", query_masks, tuple(out.query_attn.shape))
                out.loss_parts["query"] = region_kl(out.query_attn, query_masks, query_weight)
            out.loss = self.total_loss(out.loss_parts)
        return out

    def loss_parts(self, out: ModelOutput, targets: Tensor, region_masks: Tensor | None,
                   finding_token_mask: Tensor | None,
                   label_targets: Tensor | None) -> dict[str, Tensor]:
        """The four unweighted terms; a term without its inputs is a zero."""
        cfg = self.config
        zero = out.logits.new_zeros(())
        valid = targets != cfg.pad_id  # (B, T)
        parts = {
            "lm": lm_loss(out.logits, targets, cfg.pad_id),
            "ground": zero,
            "entropy": attention_entropy(out.cross_attn, valid),
            "label": zero,
        }
        if region_masks is not None and finding_token_mask is not None:
            _check_shape("region_masks", region_masks, tuple(out.cross_attn.shape))
            _check_shape("finding_token_mask", finding_token_mask, tuple(targets.shape))
            parts["ground"] = grounding_loss(out.cross_attn, region_masks,
                                             finding_token_mask & valid)
        if label_targets is not None:
            _check_shape("label_targets", label_targets, tuple(out.label_logits.shape))
            parts["label"] = F.binary_cross_entropy_with_logits(
                out.label_logits, label_targets.to(out.label_logits.dtype))
        return parts

    def total_loss(self, parts: dict[str, Tensor]) -> Tensor:
        cfg = self.config
        total = (parts["lm"] + cfg.lambda_ground * parts["ground"]
                 + cfg.lambda_entropy * parts["entropy"] + cfg.lambda_label * parts["label"])
        if "query" in parts:
            total = total + cfg.lambda_query * parts["query"]
        return total

    # --- checkpoints --------------------------------------------------------------------

    def checkpoint(self, **extra: Any) -> dict[str, Any]:
        """Weights with the config that built them, so a checkpoint rebuilds itself."""
        return {"config": self.config.to_dict(), "state_dict": self.state_dict(), **extra}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> RadReportModel:
        model = cls(ModelConfig.from_dict(checkpoint["config"]))
        model.load_state_dict(merge_lora(checkpoint["state_dict"]))  # LoRA runs: merged
        return model

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_images(self, images: Tensor) -> None:
        cfg = self.config
        if images.dim() != 4 or images.size(1) != cfg.in_chans:
            raise ValueError(
                f"images of shape {tuple(images.shape)} do not match (B, {cfg.in_chans}, H, W)"
            )
        if tuple(images.shape[-2:]) != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f"image size {images.size(-2)}x{images.size(-1)} does not match "
                f"config.image_size {cfg.image_size}x{cfg.image_size}"
            )


def lm_loss(logits: Tensor, targets: Tensor, pad_id: int) -> Tensor:
    """Mean cross-entropy over non-PAD targets; zero for a batch without any (a batch of
    studies without report text, such as CheXpert's), where the plain mean is 0/0 = NaN."""
    # logits (B, T, V), targets (B, T)
    summed = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id,
                             reduction="sum")
    return summed / (targets != pad_id).sum().clamp_min(1)


def grounding_loss(cross_attn: Tensor, region_masks: Tensor, token_mask: Tensor) -> Tensor:
    """KL(region || attention), averaged over finding tokens whose region is non-empty.

    Each attention row is already a probability distribution over patches (a softmax), so
    the region mask is normalised to sum 1 and the two distributions are compared. This
    beats BCE against a max-rescaled map: no non-differentiable max, the same scale for a
    rib fracture and a whole lung, and an attainable optimum (attention spread evenly over
    the region, zero outside), whereas a sum-1 map can never hit 1 on every region patch.
    Partial patch coverage (area-downsampled masks) becomes proportionally less target mass.
    """
    # cross_attn (B, T, N), region_masks (B, T, N) in [0, 1], token_mask (B, T) bool
    mass = region_masks.sum(dim=-1, keepdim=True)  # (B, T, 1)
    target = region_masks / mass.clamp_min(1e-8)
    log_attn = cross_attn.clamp_min(1e-12).log()
    kl = (torch.xlogy(target, target) - target * log_attn).sum(dim=-1)  # (B, T)
    weight = (token_mask & (mass.squeeze(-1) > 0)).to(kl.dtype)
    return (kl * weight).sum() / weight.sum().clamp_min(1.0)


def attention_entropy(cross_attn: Tensor, valid: Tensor) -> Tensor:
    """Mean entropy of the grounding maps of real (non-PAD) tokens, in [0, 1].

    Divided by log N so the weight means the same at any grid size; penalising it keeps
    maps peaked and readable, gently, as the grounding term is what places them.
    """
    # cross_attn (B, T, N), valid (B, T) bool
    entropy = -torch.xlogy(cross_attn, cross_attn).sum(dim=-1) / math.log(cross_attn.size(-1))
    weight = valid.to(entropy.dtype)
    return (entropy * weight).sum() / weight.sum().clamp_min(1.0)


def _check_shape(name: str, tensor: Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {expected}")


def _init_weights(module: nn.Module) -> None:
    """nanoGPT's init: N(0, 0.02) weights, zero biases."""
    if isinstance(module, nn.Linear | nn.Embedding | nn.Conv2d):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear | nn.Conv2d) and module.bias is not None:
        nn.init.zeros_(module.bias)
