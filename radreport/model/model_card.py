"""``MODEL_CARD.md`` of an exported model folder, written from what the run recorded.

A folder leaves the training machine with a card that says what the model is, what it was
trained on, how it scored on its own validate split, what was fitted on which split at
export, and that it is not for clinical use. Nothing in it comes from a study: dataset
names, split counts, configuration and aggregate metrics only (no patient identifiers,
no paths under the dataset root).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radreport.model.tracking import MODEL_CARD  # what export logs to the training run

NOT_CLINICAL = ("**Not for clinical use.** This model has not been validated clinically. "
                "It must not be used to diagnose, triage or report on patients; its drafts "
                "are for research and engineering only.")
PHANTOM_POLICY = ("synthetic phantoms: the generator's CheXpert labels and its "
                  "FINDINGS/IMPRESSION text (no patients)")


@dataclass(frozen=True)
class TrainingData:
    """The run's data as the card states it."""

    dataset: str
    split_sizes: Mapping[str, int]  # studies per split the run used
    policy: str  # one line: where labels and text come from


@dataclass(frozen=True)
class FitRecord:
    """One thing export fitted (or did not): e.g. ("calibration.json", "validate split,
    1000 studies")."""

    what: str
    how: str


def last_metrics(metrics_file: Path) -> dict[str, str]:
    """The last row of the run's ``metrics.csv`` (empty if the file is not there)."""
    if not metrics_file.is_file():
        return {}
    with metrics_file.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: v for k, v in rows[-1].items() if v} if rows else {}


def architecture(config: Mapping[str, Any], parameters: int) -> list[str]:
    """Bullet lines summarising ``model_config`` (what the encoder and decoder are)."""
    size = config["image_size"]
    if config.get("arch") == "chexquery":
        trunk = (config.get("backbone") or "residual CNN, channels "
                 + "-".join(str(c) for c in config["conv_channels"]))
        encoder = (f"v2 (CheXQuery): {trunk} to a {size // 16} x {size // 16} patch grid, "
                   f"width {config['enc_width']}, {config['query_layers']} query block(s) of "
                   f"14 condition and {config['n_anatomy_queries']} anatomy queries")
    else:
        encoder = (f"v1 (ViT): {config['enc_depth']} layer(s), width {config['enc_width']}, "
                   f"patch {config['patch']}")
    decoder = ("pretrained Hugging Face decoder" if config.get("decoder") == "hf"
               else "native Transformer decoder")
    return [f"Input: {size} x {size} grayscale, letterboxed (aspect kept, zero padded)",
            f"Encoder: {encoder}; a {config['n_labels']}-label head",
            f"Decoder: {decoder}, {config['dec_depth']} layer(s), width {config['dec_width']}"
            f", {config['dec_heads']} heads, vocabulary {config['vocab_size']}, prompt "
            f"{config.get('prompt_len', 0)} tokens",
            f"Parameters: {parameters:,}"]


def render_card(info: Mapping[str, Any], data: TrainingData, metrics: Mapping[str, str],
                fitted: Sequence[FitRecord]) -> str:
    """The card's Markdown; ``info`` is the folder's ``model.json``."""
    lines = [f"# Model card: {info['name']} {info['version']}", "", NOT_CLINICAL, "",
             "## What it is", ""]
    lines += [f"- {line}" for line in architecture(info["model_config"], info["parameters"])]
    lines += ["", "## Training data", "", f"- Dataset: {data.dataset}"]
    lines += [f"- {split}: {count} studies" for split, count in data.split_sizes.items()]
    if not data.split_sizes:
        lines.append("- Split sizes: not counted (the dataset's folder was not found)")
    lines += [f"- Labels and text: {data.policy}", "- The test split was not used.", ""]
    lines += ["## Final metrics of the run", ""]
    if metrics:
        lines += ["Last row of the run's `metrics.csv` (losses on its train and validate "
                  "splits; not a clinical evaluation):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_number(v)} |" for k, v in metrics.items()]
    else:
        lines.append("The run's `metrics.csv` was not found beside the checkpoint.")
    lines += ["", "## Fitted at export", ""]
    lines += [f"- `{f.what}`: {f.how}" for f in fitted]
    lines += ["", "## Limits", "",
              "- Not validated clinically, on any population. " + _limit(data.dataset),
              "- Run `radreport gate` and `radreport audit fairness` on held-out data before "
              "any use beyond research.", ""]
    return "\n".join(lines)


def _number(value: str) -> str:
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def _limit(dataset: str) -> str:
    if dataset == "phantoms":
        return "Trained on synthetic phantoms only: it has never seen a real radiograph."
    return f"Trained on {dataset} only; other sites, scanners and populations were not tested."


def write_card(folder: Path, text: str) -> Path | None:
    """Write ``MODEL_CARD.md`` unless the folder already has one (never overwritten)."""
    path = folder / MODEL_CARD
    if path.exists():
        return None
    path.write_text(text)
    return path
