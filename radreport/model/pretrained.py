"""Pretrained parts at the start of a run: weights from local files, freezing, and the
optimizer's parameter groups (a lower learning rate for pretrained weights, seed 004).

Loading happens here, not in ``RadReportModel.__init__``: a checkpoint or model folder
rebuilds its model from ``ModelConfig`` alone, on machines that do not have the files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from radreport.model.backbones import backbone_of, freeze, load_backbone
from radreport.model.hf_decoder import load_hf_decoder
from radreport.model.lora import add_lora
from radreport.model.model import RadReportModel

log = logging.getLogger(__name__)


def load_pretrained(model: RadReportModel, words: Sequence[str] | None = None
                    ) -> RadReportModel:
    """Fill the parts ``model.config`` names from their local files (in place); ``words``
    (our vocabulary, by id) start a pretrained decoder's token embeddings."""
    cfg = model.config
    trunk = backbone_of(model)
    if trunk is not None and cfg.backbone_checkpoint:
        load_backbone(trunk, cfg.backbone_checkpoint)
    if cfg.decoder == "hf":
        fresh = load_hf_decoder(model.decoder, cfg.decoder_path, words)
        log.info("decoder from %s; %d parts start fresh", cfg.decoder_path, len(fresh))
    return model


def prepare(model: RadReportModel, freeze_backbone: bool = False, lora_rank: int = 0,
            lora_alpha: int = 16, lora_dropout: float = 0.0) -> RadReportModel:
    """Training-time switches that are not part of the model's function."""
    trunk = backbone_of(model)
    if lora_rank:
        add_lora(model, lora_rank, lora_alpha, lora_dropout)
    if freeze_backbone:
        if trunk is None:
            raise ValueError("train.freeze_backbone needs model.backbone")
        freeze(trunk)
    return model


def param_groups(model: nn.Module, lr: float, backbone_lr_ratio: float) -> list[dict[str, Any]]:
    """Trainable parameters: the new parts at ``lr`` first (the group training logs), the
    pretrained backbone at ``lr * backbone_lr_ratio``; frozen ones are left out."""
    if backbone_lr_ratio <= 0:
        raise ValueError(f"train.backbone_lr_ratio {backbone_lr_ratio} must be positive")
    trunk = backbone_of(model)
    pretrained = {id(p) for p in trunk.parameters()} if trunk is not None else set()
    new = [p for p in model.parameters() if p.requires_grad and id(p) not in pretrained]
    groups: list[dict[str, Any]] = [{"params": new, "lr": lr, "name": "new"}]
    old = [p for p in model.parameters() if p.requires_grad and id(p) in pretrained]
    if old:
        groups.append({"params": old, "lr": lr * backbone_lr_ratio, "name": "backbone"})
    return groups
