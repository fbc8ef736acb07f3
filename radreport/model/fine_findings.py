"""An experiment: a fine detection head for the small critical findings (issue 15).

The v2 label head reads 24 x 24 patch features. A rib fracture is a gap about 1 px wide at
384 px, a small nodule a few pixels across: on validate the head keeps its critical
sensitivity only at a threshold where Fracture and Lung Lesion specificity fall to about
0.91, and those false positives are most of the errors left in micro F1.

This head looks at the image at stride 4: a small stem of its own over the raw pixels
(stride 2, then 4), the frozen CNN's stride-4 and stride-8 maps, two residual blocks, and a
1x1 convolution to one logit map per label (96 x 96 at 384 px). A study's logit is the
log-sum-exp of its map (a smooth maximum: one fracture anywhere is a fracture). It is
trained with the study label (BCE) and, where a region exists, per cell (BCE against the
mask at the fine grid); masks are optional per example. Every other weight is frozen.

``python -m radreport.model.fine_findings train`` trains on the fine-grounding cache
(``fine_grounding.FineCache``); ``measure`` reports validate AUROC and the F1 at the
threshold of the label head's own rule, for the label head, this head, and their fitted
combination, on the validate split only.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import typer
from torch import Tensor, nn

from radreport.data.labels import CHEXPERT_LABELS
from radreport.model.chexquery import CheXQueryEncoder, ResidualBlock, conv_bn
from radreport.model.fine_grounding import (
    FineCache,
    TrainOptions,
    frozen_inputs,
    frozen_run,
    run_epochs,
    run_record,
)
from radreport.model.fine_head import FINE_STRIDE, FineInputs

FINDINGS: tuple[str, ...] = ("Lung Lesion", "Fracture")
HEAD_FILE = "finding_head.pt"
HEAD_CONFIG_FILE = "finding_head.json"


@dataclass(frozen=True)
class FindingHeadConfig:
    c4: int = 32
    c8: int = 64
    width: int = 32
    stem: int = 16
    labels: tuple[str, ...] = FINDINGS
    fine_grid: int = 96  # cells per side of the maps: the study logit starts near -2


class FineFindingHead(nn.Module):
    """(image (B, 1, S, S), FineInputs) -> logit maps (B, K, S/4, S/4) and study logits (B, K)."""

    def __init__(self, cfg: FindingHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(conv_bn(1, cfg.stem, 2), conv_bn(cfg.stem, cfg.width, 2))
        self.reduce = conv_bn(cfg.width + cfg.c4 + cfg.c8, cfg.width)
        self.blocks = nn.Sequential(ResidualBlock(cfg.width, cfg.width, 1),
                                    ResidualBlock(cfg.width, cfg.width, 1))
        self.out = nn.Conv2d(cfg.width, len(cfg.labels), 1)
        nn.init.zeros_(self.out.weight)
        assert self.out.bias is not None
        with torch.no_grad():  # findings are rare per cell: the study logit starts near -2
            self.out.bias.fill_(-2.0 - 2 * math.log(cfg.fine_grid))

    def forward(self, image: Tensor, x: FineInputs) -> tuple[Tensor, Tensor]:
        size = x.fine4.shape[-2:]
        fine8 = F.interpolate(x.fine8, size=size, mode="bilinear", align_corners=False)
        h = self.reduce(torch.cat([self.stem(image), x.fine4, fine8], dim=1))
        maps = self.out(self.blocks(h))  # (B, K, H, W)
        study = torch.logsumexp(maps.flatten(2), dim=-1)
        return maps, study


def rows_of(labels: tuple[str, ...]) -> list[int]:
    return [CHEXPERT_LABELS.index(name) for name in labels]


def finding_loss(maps: Tensor, study: Tensor, masks: Tensor, labels: Tensor,
                 cell_weight: float = 1.0, positive_cell_weight: float = 20.0) -> Tensor:
    """Study BCE plus per-cell BCE where a positive study has a mask (masks (B, K, H, W) in
    [0, 1], labels (B, K)); a positive study without a mask trains the study term only."""
    loss = F.binary_cross_entropy_with_logits(study, labels)
    target = (masks >= 0.25).to(maps.dtype)
    has_mask = (masks.flatten(2).sum(-1) > 0) | (labels == 0)  # a negative: all cells 0
    if bool(has_mask.any()):
        weight = 1.0 + (positive_cell_weight - 1.0) * target
        cells = F.binary_cross_entropy_with_logits(maps, target, weight=weight,
                                                   reduction="none").mean(dim=(-2, -1))
        loss = loss + cell_weight * cells[has_mask].mean()
    return loss


def study_batch(cache_batch: tuple[Tensor, Tensor, Tensor], labels: tuple[str, ...],
                ) -> tuple[Tensor, Tensor, Tensor]:
    """(images, masks (B, K, g, g), labels (B, K)) from a fine-grounding cache batch."""
    images, masks, weight = cache_batch
    rows = rows_of(labels)
    return images, masks[:, rows], weight[:, rows]


def train_head(encoder: CheXQueryEncoder, head: FineFindingHead, cache: FineCache,
               options: TrainOptions, checkpoint: Path) -> list[float]:
    """Epochs over a ``FineCache`` (``fine_grounding.run_epochs``: cosine learning rate, a
    checkpoint per epoch, resumes)."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=options.lr,
                                  weight_decay=options.weight_decay)

    def step(index: np.ndarray) -> float:
        images, masks, labels = study_batch(cache.batch(index), head.cfg.labels)
        with torch.no_grad():
            inputs = frozen_inputs(encoder, images)
        maps, study = head(images, inputs)
        loss = finding_loss(maps, study, masks, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return run_epochs(head, optimizer, cache.spec.count, options, checkpoint, step)


def save_head(head: FineFindingHead, folder: Path, meta: dict[str, object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), folder / HEAD_FILE)
    (folder / HEAD_CONFIG_FILE).write_text(
        json.dumps({"head": asdict(head.cfg), **meta}, indent=2) + "\n")


def load_head(folder: Path) -> FineFindingHead:
    data = json.loads((folder / HEAD_CONFIG_FILE).read_text())["head"]
    head = FineFindingHead(FindingHeadConfig(**{**data, "labels": tuple(data["labels"])}))
    head.load_state_dict(torch.load(folder / HEAD_FILE, map_location="cpu", weights_only=True))
    return head.eval()


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def train(model_dir: Path = Path("radreport/model/default"),
          out: Path = Path("var/finding-head"),
          work: Path = Path("/tmp/fine-grounding"), count: int = 4000, epochs: int = 3,
          batch_size: int = 16, lr: float = 2e-3, threads: int = 2) -> None:
    """Train on the fine-grounding cache of train studies 0..count-1 (built if missing)."""
    model, encoder, cache = frozen_run(model_dir, work, count, threads)
    cfg = model.config
    head = FineFindingHead(FindingHeadConfig(cfg.conv_channels[1], cfg.conv_channels[2],
                                             fine_grid=cfg.image_size // FINE_STRIDE))
    options = TrainOptions(epochs, batch_size, lr)
    began = time.perf_counter()
    means = train_head(encoder, head, cache, options, work / "finding-checkpoint.pt")
    save_head(head, out, run_record(model_dir, count, options, means, began))
    print(f"saved {out / HEAD_FILE}", flush=True)


@app.command()
def measure(model_dir: Path = Path("radreport/model/default"),
            head_dir: Path = Path("var/finding-head"), count: int = 1000,
            threads: int = 2) -> None:
    """Validate AUROC per label: the label head, this head, and a logistic combination
    fitted on validate studies 0..count/2-1 and scored on the rest."""
    from radreport.model.fine_findings_eval import run_measurement

    torch.set_num_threads(threads)
    run_measurement(model_dir, head_dir, count)


if __name__ == "__main__":
    app()
