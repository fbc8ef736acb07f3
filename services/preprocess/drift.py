"""Input drift: how far a study's pixel intensities are from what the model was trained on.

The reference is the intensity histogram of training-split phantoms' model inputs, shipped
beside the model (``intensity_reference.json``); the statistic is the two-sample
Kolmogorov-Smirnov distance between the histograms' cumulative distributions (our design
docs, 000 section 4.5).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

from radreport.model.drift_reference import BINS, REFERENCE_FILE, phantom_reference
from radreport.model.report import DEFAULT_MODEL_DIR, ModelInfo

__all__ = ["BINS", "REFERENCE_FILE", "ks_distance", "make_reference", "reference"]


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest gap between two histograms' cumulative distributions, in [0, 1]."""
    return float(np.abs(np.cumsum(a) - np.cumsum(b)).max())


@cache
def reference(model_dir: Path = DEFAULT_MODEL_DIR) -> np.ndarray | None:
    path = model_dir / REFERENCE_FILE
    if not path.is_file():
        return None
    return np.asarray(json.loads(path.read_text())["histogram"], dtype=np.float64)


def make_reference(count: int = 64, size: int | None = None) -> dict[str, object]:
    """The reference of the training split: ``size`` px model inputs of ``count`` phantoms.

    ``size`` defaults to the shipped model's input size (``model.json``). ``radreport
    export`` writes a trained model's own (``radreport.model.drift_reference``).
    """
    if size is None:
        size = ModelInfo.load(DEFAULT_MODEL_DIR / "model.json").image_size
    return phantom_reference(count, size)
