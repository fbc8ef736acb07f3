"""The fine grounding head: one map per v2 query at stride 4 (128 x 128 at 512 px).

The queries' maps live on the 24 x 24 patch grid (stride 16). The pointing game tests the
pixel under the centre of the peak cell, so a line, a tube or a band a few pixels wide
rarely contains a cell centre even when the peak cell overlaps it: the map has to be finer.

The head refines each condition/anatomy query's coarse attention within the coarse region:
keys come from the CNN's stride-4 and stride-8 feature maps (1x1 convolutions, the
stride-8 one upsampled, then a residual 3x3 convolution), queries from the query layers'
output embeddings (a linear; zero at the start, so an untrained head returns the upsampled
coarse map), and ``logits = q . k / sqrt(d) + s * log(coarse map upsampled)``, a softmax
over positions. Device rows follow the queries (``DEVICE_KINDS``): a report sentence names
one device where the Support Devices query covers them all. Only the built-in v2 CNN (no
``model.backbone``) has the stride-4 map this reads. Parameters that feed no op but an
add are stored at their final shape, so the exported graph keeps them by name and
``onnx_weights`` reads them back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radreport.data.labels import CHEXPERT_LABELS
from radreport.eval.labeler import DEVICE_KINDS
from radreport.model.config import ModelConfig

FINE_STRIDE = 4
STRIDE4_LAYER, STRIDE8_LAYER = 2, 4  # indices in ConvEncoder.net after which the maps are taken


@dataclass(frozen=True)
class HeadConfig:
    width: int = 128  # the queries' width (enc_width)
    c4: int = 32  # channels of the stride-4 map (conv_channels[1])
    c8: int = 64  # channels of the stride-8 map (conv_channels[2])
    dim: int = 32
    devices: int = 0  # extra rows, one per kind of device (``DEVICE_KINDS``), after the queries
    support_row: int = 13  # the Support Devices condition query the device rows refine
    fine_grid: int = 96  # image size / FINE_STRIDE: the device rows' position prior's grid


@dataclass
class FineInputs:
    """What the frozen encoder gives the head for a batch."""

    fine4: Tensor  # (B, c4, S/4, S/4)
    fine8: Tensor  # (B, c8, S/8, S/8)
    queries: Tensor  # (B, Q, width) after the query layers and their LayerNorm
    coarse: Tensor  # (B, Q, N) the last query block's attention on the patch grid


class FineGroundingHead(nn.Module):
    """(FineInputs) -> (B, Q + D, (S/4)^2): each query's map at stride 4, rows summing to 1,
    then one row per device kind.

    A report sentence names one device ("endotracheal tube") where the Support Devices query
    is supervised with the union of the study's devices; each device row starts from that
    query (its embedding plus a learned offset, its coarse map as prior) and adds a learned
    position prior, and is supervised with its own kind's region where the study has one.
    """

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.k4 = nn.Conv2d(cfg.c4, cfg.dim, 1)
        self.k8 = nn.Conv2d(cfg.c8, cfg.dim, 1)
        self.mix = nn.Sequential(nn.ReLU(), nn.Conv2d(cfg.dim, cfg.dim, 3, padding=1))
        self.q = nn.Linear(cfg.width, cfg.dim)
        nn.init.zeros_(self.q.weight)  # start as the upsampled coarse map
        nn.init.zeros_(self.q.bias)
        self.prior_scale = nn.Parameter(torch.ones(()))
        self.device_q = nn.Parameter(torch.zeros(1, cfg.devices, cfg.dim))
        self.device_prior = nn.Parameter(torch.zeros(1, cfg.devices, cfg.fine_grid ** 2))

    def forward(self, x: FineInputs) -> Tensor:
        size = x.fine4.shape[-2:]
        k = self.k4(x.fine4) + F.interpolate(self.k8(x.fine8), size=size, mode="bilinear",
                                             align_corners=False)
        k = (k + self.mix(k)).flatten(2)  # (B, d, H*W)
        q = self.q(x.queries)
        prior = coarse_prior(x.coarse, size)
        if self.cfg.devices:
            row = self.cfg.support_row
            q = torch.cat([q, q[:, row : row + 1] + self.device_q], dim=1)
            prior = torch.cat([prior, prior[:, row : row + 1].expand(
                -1, self.cfg.devices, -1)], dim=1)
        logits = torch.einsum("bqd,bdn->bqn", q, k) * self.cfg.dim ** -0.5
        logits = logits + self.prior_scale * prior
        if self.cfg.devices:
            logits = torch.cat([logits[:, : -self.cfg.devices],
                                logits[:, -self.cfg.devices :] + self.device_prior], dim=1)
        return logits.softmax(dim=-1)


def coarse_prior(coarse: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """log of the coarse maps (B, Q, g*g) upsampled bilinearly to (B, Q, H*W)."""
    b, q, n = coarse.shape
    grid = math.isqrt(n)
    up = F.interpolate(coarse.reshape(b * q, 1, grid, grid), size=size, mode="bilinear",
                       align_corners=False)
    return up.clamp_min(1e-8).log().reshape(b, q, -1)


def head_config(cfg: ModelConfig, devices: int = len(DEVICE_KINDS)) -> HeadConfig:
    """The head for a v2 model with the built-in CNN (widths from its config)."""
    if cfg.arch != "chexquery" or cfg.backbone:
        raise ValueError("the fine head reads the built-in v2 CNN's stride-4 map")
    return HeadConfig(cfg.enc_width, cfg.conv_channels[1], cfg.conv_channels[2],
                      devices=devices, support_row=CHEXPERT_LABELS.index("Support Devices"),
                      fine_grid=cfg.image_size // FINE_STRIDE)
