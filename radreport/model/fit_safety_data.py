"""``radreport fit-safety --dataset``: refit a model folder's safety net on a real dataset.

A model trained on MIMIC-CXR, CheXpert or IU X-ray must not keep temperatures, thresholds
and an OOD gate fitted on phantoms (issue 18: a model folder is always self-consistent).
This encodes the dataset's validate split (calibration, thresholds, the OOD threshold)
and train split (the OOD scorer's mean and covariance) through the served encoder, with
the labels training used (``records.training_labels``), and fits exactly as
``fit_safety.fit_encoded`` does for phantoms. Never the test split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radreport.model.fit_safety import EncodedSplit, SafetyFit, _encode_batch, fit_encoded
from radreport.model.images import UnreadableImage, read_model_image
from radreport.model.records import split_records, training_labels
from radreport.model.report import ReportGenerator, Variant

log = logging.getLogger(__name__)


@dataclass
class DatasetFit:
    fit: SafetyFit
    unreadable: int  # images skipped in the two splits


def encode_split(generator: ReportGenerator, kind: str, root: str | Path, split: str,
                 limit: int, batch_size: int = 32) -> tuple[EncodedSplit, int]:
    """Head probabilities, features and training labels of a split's first ``limit``
    readable studies; also how many unreadable images were skipped."""
    size = generator.info.image_size
    probs: list[np.ndarray] = []
    features: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    skipped = 0
    for index, record in enumerate(split_records(kind, root, split)):
        if len(labels) == limit:
            break
        try:
            batch.append(read_model_image(str(record.image_path), size))
        except UnreadableImage as err:
            skipped += 1
            log.warning("skipped an unreadable image: %s split item %d (%s)", split, index,
                        err.reason)
            continue
        labels.append(training_labels(record)[0])
        if len(batch) == batch_size:
            _encode_batch(generator, batch, probs, features)
            batch = []
    if batch:
        _encode_batch(generator, batch, probs, features)
    if not labels:
        raise ValueError(f"no readable {split} study in {kind} at {root}")
    return EncodedSplit(np.concatenate(probs), np.concatenate(features),
                        np.stack(labels)), skipped


def fit_safety_on_dataset(model_dir: str | Path, kind: str, root: str | Path,
                          validate_count: int = 1000, train_count: int = 2000,
                          critical_sensitivity: float = 1.0, min_specificity: float = 0.9,
                          max_review_rate: float = 0.2, ood_flag_rate: float = 0.01,
                          variant: Variant = "fp32", pooled_sensitivity: float | None = None,
                          ) -> DatasetFit:
    """Write ``calibration.json`` (or the variant's) fitted on ``kind`` at ``root``."""
    folder = Path(model_dir)
    generator = ReportGenerator(folder, variant)
    validate, bad_validate = encode_split(generator, kind, root, "validate", validate_count)
    train, bad_train = encode_split(generator, kind, root, "train", train_count)
    fit = fit_encoded(folder, generator, validate, train, critical_sensitivity,
                      min_specificity, max_review_rate, ood_flag_rate, variant,
                      pooled_sensitivity)
    return DatasetFit(fit, bad_validate + bad_train)
