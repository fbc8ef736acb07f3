"""The input-drift reference of a model folder: the training split's intensity histogram.

The preprocess service compares each study's model input with ``intensity_reference.json``
(``services/preprocess/drift.py``). The reference belongs to the model that was trained, so
export writes it from the run's own training split: phantoms as the shipped reference was
made (the first training-split seeds at the generator's default size), a real dataset's
first readable training images. Both letterboxed into the model's square, as served. It
lives here, not in the service, because ``radreport.model`` never imports a service
package; the service imports this module (NumPy only at import time).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

REFERENCE_FILE = "intensity_reference.json"
BINS = 32

log = logging.getLogger(__name__)


def intensity_histogram(pixels: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Normalised histogram over [0, 1] (sums to 1): the raw material of input-drift metrics."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    counts, _ = np.histogram(pixels, bins=bins, range=(0.0, 1.0))
    return (counts / max(1, int(counts.sum()))).astype(np.float64)


def _reference(total: np.ndarray, count: int, source: str) -> dict[str, object]:
    return {"bins": BINS, "range": [0.0, 1.0], "studies": count, "source": source,
            "histogram": (total / count).round(6).tolist()}


def phantom_reference(count: int, size: int) -> dict[str, object]:
    """``size`` px model inputs of the first ``count`` training-split phantoms."""
    from radreport.data.benchmark import benchmark_split
    from radreport.data.phantoms.generator import generate_study
    from radreport.model.report import to_model_input

    total = np.zeros(BINS)
    for seed in benchmark_split("train").seeds[:count]:
        model_input, _ = to_model_input(generate_study(seed).image, size)
        total += intensity_histogram(model_input, BINS)
    return _reference(total, count, f"training-split phantoms, letterboxed {size} px model "
                                    "inputs")


def dataset_reference(kind: str, root: str | Path, count: int, size: int) -> dict[str, object]:
    """``size`` px model inputs of the first ``count`` readable training images of ``kind``
    (unreadable ones are skipped and logged by split position, never by path)."""
    from radreport.model.images import UnreadableImage, read_model_image
    from radreport.model.records import split_records

    total, used = np.zeros(BINS), 0
    for index, record in enumerate(split_records(kind, root, "train")):
        if used == count:
            break
        try:
            pixels = read_model_image(str(record.image_path), size)
        except UnreadableImage as err:
            log.warning("drift reference: skipped train split item %d (%s)", index, err.reason)
            continue
        total += intensity_histogram(pixels, BINS)
        used += 1
    if not used:
        raise ValueError(f"no readable train image in {kind} to make the drift reference")
    return _reference(total, used, f"training-split {kind} images, letterboxed {size} px "
                                   "model inputs")


def write_reference(folder: str | Path, reference: dict[str, object]) -> Path:
    """``intensity_reference.json`` in ``folder``, laid out as the shipped one."""
    path = Path(folder) / REFERENCE_FILE
    path.write_text(json.dumps(reference, indent=1) + "\n")
    return path
