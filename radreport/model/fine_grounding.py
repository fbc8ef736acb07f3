"""An experiment: a fine grounding head, one map per v2 query at stride 4 (96 x 96 at 384 px).

The served sentence maps live on the 24 x 24 patch grid (stride 16). The pointing game tests
the pixel under the centre of the peak cell, so a line, a tube or a band a few pixels wide
rarely contains a cell centre even when the peak cell overlaps it: the map has to be finer.

The head refines each condition/anatomy query's coarse attention within the coarse region:
keys come from the frozen CNN's stride-4 and stride-8 feature maps (1x1 convolutions, the
stride-8 one upsampled, then a residual 3x3 convolution), queries from the query layers'
output embeddings (a linear; zero at the start, so an untrained head returns the upsampled
coarse map), and ``logits = q . k / sqrt(d) + s * log(coarse map upsampled)``, a softmax
over positions. It is trained with the query loss the model uses (``region_kl``) on the
phantoms' masks area-downsampled to the fine grid, every other weight frozen. Only the
built-in v2 CNN (no ``model.backbone``) has the stride-4 map this reads.

``python -m radreport.model.fine_grounding train`` renders train-split studies once into a
memmap cache, trains with a checkpoint per epoch (it resumes), and writes the head's
weights; ``measure`` runs ``fine_grounding_eval`` on the validate split.
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

from radreport.data.benchmark import benchmark_split
from radreport.data.labels import CHEXPERT_LABELS, POSITIVE
from radreport.data.phantoms.generator import generate_study
from radreport.model.cache import RecordSpec, _query_masks
from radreport.model.chexquery import CheXQueryEncoder, region_kl
from radreport.model.data import area_downsample
from radreport.model.model import RadReportModel
from radreport.model.onnx_weights import recover_model

HEAD_FILE = "fine_head.pt"
HEAD_CONFIG_FILE = "fine_head.json"
STRIDE4_LAYER, STRIDE8_LAYER = 2, 4  # indices in ConvEncoder.net after which the maps are taken
FINE_STRIDE = 4


@dataclass(frozen=True)
class HeadConfig:
    width: int = 128  # the queries' width (enc_width)
    c4: int = 32  # channels of the stride-4 map (conv_channels[1])
    c8: int = 64  # channels of the stride-8 map (conv_channels[2])
    dim: int = 32


@dataclass
class FineInputs:
    """What the frozen encoder gives the head for a batch."""

    fine4: Tensor  # (B, c4, S/4, S/4)
    fine8: Tensor  # (B, c8, S/8, S/8)
    queries: Tensor  # (B, Q, width) after the query layers and their LayerNorm
    coarse: Tensor  # (B, Q, N) the last query block's attention on the patch grid


class FineGroundingHead(nn.Module):
    """(FineInputs) -> (B, Q, (S/4)^2): each query's map at stride 4, rows summing to 1."""

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

    def forward(self, x: FineInputs) -> Tensor:
        size = x.fine4.shape[-2:]
        k = self.k4(x.fine4) + F.interpolate(self.k8(x.fine8), size=size, mode="bilinear",
                                             align_corners=False)
        k = (k + self.mix(k)).flatten(2)  # (B, d, H*W)
        logits = torch.einsum("bqd,bdn->bqn", self.q(x.queries), k) * self.cfg.dim ** -0.5
        return (logits + self.prior_scale * coarse_prior(x.coarse, size)).softmax(dim=-1)


def coarse_prior(coarse: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """log of the coarse maps (B, Q, g*g) upsampled bilinearly to (B, Q, H*W)."""
    b, q, n = coarse.shape
    grid = math.isqrt(n)
    up = F.interpolate(coarse.reshape(b * q, 1, grid, grid), size=size, mode="bilinear",
                       align_corners=False)
    return up.clamp_min(1e-8).log().reshape(b, q, -1)


def head_config_for(model: RadReportModel) -> HeadConfig:
    cfg = model.config
    if cfg.arch != "chexquery" or cfg.backbone:
        raise ValueError("the fine head reads the built-in v2 CNN's stride-4 map")
    return HeadConfig(cfg.enc_width, cfg.conv_channels[1], cfg.conv_channels[2])


def frozen_inputs(encoder: CheXQueryEncoder, images: Tensor) -> FineInputs:
    """The encoder's forward pass as ``CheXQueryEncoder.forward`` runs it, keeping the
    stride-4/8 maps and the queries' output embeddings (which it does not return)."""
    cnn = encoder.cnn
    assert isinstance(cnn.net, nn.Sequential)
    x, maps = images, {}
    for i, layer in enumerate(cnn.net):
        x = layer(x)
        maps[i] = x
    patches = cnn.ln(cnn.out(x.flatten(2).transpose(1, 2)) + cnn.pos_emb)
    queries = encoder.queries.expand(patches.size(0), -1, -1)
    attn = patches.new_zeros(())
    for block in encoder.blocks:
        queries, attn = block(queries, patches)
    return FineInputs(maps[STRIDE4_LAYER], maps[STRIDE8_LAYER], encoder.ln_q(queries), attn)


def frozen_encoder(model: RadReportModel) -> CheXQueryEncoder:
    """The model's v2 encoder with no gradients, in eval mode (BatchNorm as exported)."""
    encoder = model.encoder
    if not isinstance(encoder, CheXQueryEncoder):
        raise ValueError("the fine head needs a v2 (chexquery) model")
    head_config_for(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return encoder


def query_weights(labels: Tensor, n_queries: int) -> Tensor:
    """(B, 14) labels -> (B, Q): a condition query is supervised when its finding is
    present, an anatomy query always (as ``cache.py`` weighs the query loss)."""
    weight = labels.new_ones(labels.size(0), n_queries)
    weight[:, : labels.size(1)] = labels
    return weight


def fine_loss(maps: Tensor, masks: Tensor, weight: Tensor) -> Tensor:
    """The query loss at the fine grid: KL(mask || map) over supervised, non-empty rows."""
    return region_kl(maps, masks.flatten(2), weight)


# --- the train-split cache -------------------------------------------------------------------


@dataclass(frozen=True)
class CacheSpec:
    count: int
    image_size: int = 384
    study_size: int = 512
    n_queries: int = 20

    @property
    def grid(self) -> int:
        return self.image_size // FINE_STRIDE


def render_fine_record(seed: int, spec: CacheSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint16 (S, S), masks uint8 (Q, g, g), labels uint8 (14,)) of one study,
    rendered as training renders it (``cache.render_record``), masks at the fine grid."""
    study = generate_study(seed, spec.study_size)
    image = area_downsample(study.image, spec.image_size).numpy()
    record = RecordSpec(spec.image_size, spec.grid, 1, spec.n_queries)
    masks = _query_masks(study, record).reshape(spec.n_queries, spec.grid, spec.grid)
    labels = np.array([study.labels[name] == POSITIVE for name in CHEXPERT_LABELS], np.uint8)
    return np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16), masks, labels


class FineCache:
    """Train studies 0..count-1 in memmaps under ``root``; ``build`` renders missing ones."""

    def __init__(self, root: Path, spec: CacheSpec) -> None:
        self.spec = spec
        self.dir = root / f"train{spec.count}_{spec.image_size}_{spec.study_size}"
        self.dir.mkdir(parents=True, exist_ok=True)
        n, s, g, q = spec.count, spec.image_size, spec.grid, spec.n_queries
        self.images = self._open("images", np.uint16, (n, s, s))
        self.masks = self._open("masks", np.uint8, (n, q, g, g))
        self.labels = self._open("labels", np.uint8, (n, len(CHEXPERT_LABELS)))
        self.done = self._open("done", np.uint8, (n,))

    def _open(self, name: str, dtype: type, shape: tuple[int, ...]) -> np.memmap:
        path = self.dir / f"{name}.npy"
        mode = "r+" if path.exists() else "w+"
        return np.lib.format.open_memmap(path, mode=mode, dtype=dtype, shape=shape)

    def build(self) -> None:
        seeds = benchmark_split("train").seeds
        for i in np.flatnonzero(self.done == 0):
            self.images[i], self.masks[i], self.labels[i] = render_fine_record(
                seeds[int(i)], self.spec)
            self.done[i] = 1
            if i % 500 == 499:
                self.flush()
                print(f"rendered {i + 1}/{self.spec.count}", flush=True)
        self.flush()

    def flush(self) -> None:
        for array in (self.images, self.masks, self.labels, self.done):
            array.flush()

    def batch(self, index: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """(images (B, 1, S, S), masks (B, Q, g, g) in [0, 1], query weights (B, Q))."""
        order = np.sort(index)
        images = torch.from_numpy(self.images[order].astype(np.float32) / 65535.0)[:, None]
        masks = torch.from_numpy(self.masks[order].astype(np.float32) / 255.0)
        labels = torch.from_numpy(self.labels[order].astype(np.float32))
        return images, masks, query_weights(labels, self.spec.n_queries)


# --- training --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    log_every: int = 25


def load_head(folder: str | Path) -> FineGroundingHead:
    """A head saved by ``save_head`` (its config beside the weights)."""
    folder = Path(folder)
    cfg = HeadConfig(**json.loads((folder / HEAD_CONFIG_FILE).read_text())["head"])
    head = FineGroundingHead(cfg)
    head.load_state_dict(torch.load(folder / HEAD_FILE, map_location="cpu", weights_only=True))
    return head.eval()


def save_head(head: FineGroundingHead, folder: Path, meta: dict[str, object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), folder / HEAD_FILE)
    (folder / HEAD_CONFIG_FILE).write_text(
        json.dumps({"head": asdict(head.cfg), "stride": FINE_STRIDE, **meta}, indent=2) + "\n")


def train_step(encoder: CheXQueryEncoder, head: FineGroundingHead,
               optimizer: torch.optim.Optimizer, images: Tensor, masks: Tensor,
               weight: Tensor) -> float:
    with torch.no_grad():
        inputs = frozen_inputs(encoder, images)
    loss = fine_loss(head(inputs), masks, weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_head(encoder: CheXQueryEncoder, head: FineGroundingHead, cache: FineCache,
               options: TrainOptions, checkpoint: Path) -> list[float]:
    """Epochs over the cache (cosine learning rate), a checkpoint after each; resumes from
    ``checkpoint`` if it exists. Returns the mean loss per epoch run here."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=options.lr,
                                  weight_decay=options.weight_decay)
    steps_per_epoch = cache.spec.count // options.batch_size
    total = steps_per_epoch * options.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / total)))
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start = int(state["epoch"])
    means = []
    for epoch in range(start, options.epochs):
        order = np.random.default_rng([options.seed, epoch]).permutation(cache.spec.count)
        losses, began = [], time.perf_counter()
        head.train()
        for step in range(steps_per_epoch):
            batch = cache.batch(order[step * options.batch_size : (step + 1)
                                      * options.batch_size])
            losses.append(train_step(encoder, head, optimizer, *batch))
            schedule.step()
            if (step + 1) % options.log_every == 0:
                print(f"epoch {epoch + 1} step {step + 1}/{steps_per_epoch} "
                      f"loss {np.mean(losses[-options.log_every:]):.4f} "
                      f"{time.perf_counter() - began:.0f}s", flush=True)
        means.append(float(np.mean(losses)))
        print(f"epoch {epoch + 1} mean loss {means[-1]:.4f}", flush=True)
        torch.save({"head": head.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "epoch": epoch + 1}, checkpoint)
    return means


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def train(model_dir: Path = Path("radreport/model/default"),
          out: Path = Path("radreport/model/candidates/fine-grounding"),
          work: Path = Path("/tmp/fine-grounding"), count: int = 3000, epochs: int = 3,
          batch_size: int = 16, lr: float = 3e-3, threads: int = 2,
          build_only: bool = False) -> None:
    """Render train studies 0..count-1 (cached), train the head, save it into ``out``."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = recover_model(model_dir)  # eval mode: exactly the exported graphs' function
    encoder = frozen_encoder(model)
    cache = FineCache(work, CacheSpec(count, model.config.image_size))
    began = time.perf_counter()
    cache.build()
    print(f"cache ready in {time.perf_counter() - began:.0f}s", flush=True)
    if build_only:
        return
    head = FineGroundingHead(head_config_for(model))
    options = TrainOptions(epochs, batch_size, lr)
    began = time.perf_counter()
    means = train_head(encoder, head, cache, options, work / "checkpoint.pt")
    save_head(head, out, {"model": str(model_dir), "train_studies": count,
                          "options": asdict(options), "epoch_losses": means,
                          "train_seconds_this_run": round(time.perf_counter() - began)})
    print(f"saved {out / HEAD_FILE}", flush=True)


@app.command()
def measure(model_dir: Path = Path("radreport/model/default"),
            head_dir: Path = Path("radreport/model/candidates/fine-grounding"),
            count: int = 1000, fit_count: int = 500, threads: int = 2) -> None:
    """Pointing and IoU per finding on validate (see ``fine_grounding_eval``)."""
    from radreport.model.fine_grounding_eval import run_measurement

    torch.set_num_threads(threads)
    run_measurement(model_dir, head_dir, count, fit_count)


if __name__ == "__main__":
    app()
