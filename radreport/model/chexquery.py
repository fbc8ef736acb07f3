"""The v2 image side (seed 003, CheXQuery): a residual CNN, then learned queries.

A small residual CNN turns the radiograph into a grid of patch features at stride 16
(24 x 24 at 384 px): convolutions learn edges and textures from few examples, where a ViT
from scratch needs far more data. Learned 2D positions are added so the decoder and the
queries know where a patch is (laterality is a position).

Twenty learned queries cross-attend to the patches, in ``query_layers`` blocks of
cross-attention, self-attention among the queries, and an MLP:
- 14 condition queries, one per CheXpert label; each feeds its own logit of the label head,
  and its last cross-attention map is supervised with the finding's region where a mask
  exists (so each finding's map is learned directly, not inferred from a class score);
- 6 anatomical queries (cardiac, left lung, right lung, mediastinum, diaphragm, spine),
  supervised with anatomy masks where a dataset has them.

A gated fusion of the global (mean-pooled) patch token and the pooled queries becomes one
extra memory token in front of the patches; the decoder reads both through
cross-attention. The pooled patch features are also the study's feature vector for the
out-of-distribution score. Masks are optional per example: nothing here needs a phantom.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radreport.model.backbones import build_trunk
from radreport.model.config import ModelConfig
from radreport.model.fine_head import STRIDE4_LAYER, STRIDE8_LAYER, FineInputs
from radreport.model.query_grounding import ANATOMY_QUERIES

__all__ = ["ANATOMY_QUERIES", "CheXQueryEncoder", "patch_grid_masks", "region_kl"]


def conv_bn(cin: int, cout: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                               nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a (projected) shortcut, as in ResNet-18."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride), conv_bn(cout, cout, relu=False))
        self.skip: nn.Module = nn.Identity()
        if cin != cout or stride != 1:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ConvEncoder(nn.Module):
    """(B, 1, H, W) -> patch features (B, N, C) at stride 16, row-major like the ViT's."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c0, c1, c2, c3, c4 = cfg.conv_channels
        self.net: nn.Module
        if cfg.backbone:  # a standard network instead (backbones.py), same stride 16
            trunk = build_trunk(cfg)
            self.net, c4 = trunk, trunk.out_channels
        else:
            self.net = nn.Sequential(
                conv_bn(cfg.in_chans, c0, 2), conv_bn(c0, c1, 2),  # /4
                ResidualBlock(c1, c1, 1),
                ResidualBlock(c1, c2, 2), ResidualBlock(c2, c2, 1),  # /8
                ResidualBlock(c2, c3, 2), ResidualBlock(c3, c3, 1),  # /16
                ResidualBlock(c3, c4, 1), ResidualBlock(c4, c4, 1),
            )
        self.out = nn.Linear(c4, cfg.enc_width)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.n_patches, cfg.enc_width))
        self.ln = nn.LayerNorm(cfg.enc_width)

    def forward(self, images: Tensor) -> Tensor:
        x = self.net(images).flatten(2).transpose(1, 2)  # (B, N, C4)
        return self.ln(self.out(x) + self.pos_emb)

    def with_fine_maps(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Patch features and the built-in CNN's stride-4 and stride-8 maps (fine head).

        The maps are taken by forward hooks so that the pass is ``forward`` itself: an
        exported graph names its nodes by the modules called, which ``onnx_weights`` reads.
        """
        assert isinstance(self.net, nn.Sequential), "a backbone has no fine maps"
        taps: list[Tensor] = []
        handles = [self.net[i].register_forward_hook(lambda _m, _a, out: taps.append(out))
                   for i in (STRIDE4_LAYER, STRIDE8_LAYER)]
        try:
            patches = self(images)
        finally:
            for handle in handles:
                handle.remove()
        return patches, taps[0], taps[1]


class QueryBlock(nn.Module):
    """Queries read the patches, then each other (pre-norm)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln_q = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.ln_s = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ln_m = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))

    def forward(self, queries: Tensor, patches: Tensor) -> tuple[Tensor, Tensor]:
        # queries (B, Q, C), patches (B, N, C) -> queries, attention (B, Q, N) mean of heads
        b, q_len, c = queries.shape
        h, d = self.heads, c // self.heads
        q = self.q(self.ln_q(queries)).view(b, q_len, h, d).transpose(1, 2)
        k, v = (t.view(b, -1, h, d).transpose(1, 2) for t in self.kv(patches).chunk(2, dim=-1))
        weights = ((q @ k.transpose(-2, -1)) * d**-0.5).softmax(dim=-1)  # (B, h, Q, N)
        read = (weights @ v).transpose(1, 2).reshape(b, q_len, c)
        queries = queries + self.proj(read)
        s = self.ln_s(queries)
        queries = queries + self.self_attn(s, s, s, need_weights=False)[0]
        queries = queries + self.mlp(self.ln_m(queries))
        return queries, weights.mean(dim=1)


@dataclass
class QueryOutput:
    patches: Tensor  # (B, N, C) encoder patch features
    fused: Tensor  # (B, 1, C) gated global + pooled-query token
    label_logits: Tensor  # (B, n_labels)
    pooled: Tensor  # (B, C) mean patch feature: the study's feature vector (OOD)
    query_attn: Tensor  # (B, n_labels + n_anatomy, N) last block's attention
    fine: FineInputs | None = None  # what the fine head reads, when the model has one


class CheXQueryEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        width = cfg.enc_width
        self.n_labels = cfg.n_labels
        self.cnn = ConvEncoder(cfg)
        self.queries = nn.Parameter(torch.randn(1, cfg.n_labels + cfg.n_anatomy_queries,
                                                width) * 0.02)
        self.blocks = nn.ModuleList(QueryBlock(width, cfg.enc_heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.query_layers))
        self.ln_q = nn.LayerNorm(width)
        # One logit per condition query: a per-label linear read-out (einsum, no loops).
        self.label_weight = nn.Parameter(torch.zeros(cfg.n_labels, width))
        self.label_bias = nn.Parameter(torch.zeros(cfg.n_labels))
        self.global_proj = nn.Linear(width, width)
        self.gate = nn.Linear(2 * width, width)

    def forward(self, images: Tensor, fine: bool = False) -> QueryOutput:
        """``fine``: also return what a fine grounding head reads (``QueryOutput.fine``)."""
        fine4 = fine8 = None
        if fine:
            patches, fine4, fine8 = self.cnn.with_fine_maps(images)
        else:
            patches = self.cnn(images)  # (B, N, C)
        queries = self.queries.expand(patches.size(0), -1, -1)
        attn = patches.new_zeros(())
        for block in self.blocks:
            queries, attn = block(queries, patches)
        queries = self.ln_q(queries)
        conditions = queries[:, : self.n_labels]  # (B, L, C)
        logits = torch.einsum("blc,lc->bl", conditions, self.label_weight) + self.label_bias
        pooled = patches.mean(dim=1)  # (B, C)
        global_token = self.global_proj(pooled)
        pooled_queries = queries.mean(dim=1)
        gate = torch.sigmoid(self.gate(torch.cat([global_token, pooled_queries], dim=-1)))
        fused = gate * global_token + (1.0 - gate) * pooled_queries
        inputs = (None if fine4 is None or fine8 is None
                  else FineInputs(fine4, fine8, queries, attn))
        return QueryOutput(patches, fused[:, None], logits, pooled, attn, inputs)


def region_kl(attn: Tensor, masks: Tensor, weight: Tensor) -> Tensor:
    """KL(mask || attention) averaged over rows with weight > 0 and a non-empty mask.

    attn (B, Q, N) rows summing to 1, masks (B, Q, N) in [0, 1], weight (B, Q) >= 0.
    """
    mass = masks.sum(dim=-1, keepdim=True)
    target = masks / mass.clamp_min(1e-8)
    kl = (torch.xlogy(target, target) - target * attn.clamp_min(1e-12).log()).sum(dim=-1)
    w = weight * (mass.squeeze(-1) > 0).to(kl.dtype)
    return (kl * w).sum() / w.sum().clamp_min(1.0)


def patch_grid_masks(masks: Tensor, grid: int) -> Tensor:
    """(..., H, W) float masks -> (..., grid * grid) area fractions per patch."""
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    return F.interpolate(flat, size=(grid, grid), mode="area").reshape(*lead, grid * grid)
