"""``radreport fit-safety``: calibrate a model folder's head and OOD gate on phantoms.

Everything is fitted on data the test split never touches:
- temperatures, decision thresholds and uncertain bands on the validate split. A critical
  label's threshold keeps every validate positive by default (unless that breaks the 0.90
  specificity floor): a 0.99 target let a near-perfect label's threshold climb into the
  saturated top of the probabilities (0.99991 for effusion), where a test positive a hair
  weaker is missed;
- the out-of-distribution scorer's mean and covariance on training-split features, its
  threshold on the validate split (the score quantile that flags ``ood_flag_rate`` of
  in-distribution studies).
The encoder runs through ONNX Runtime exactly as served, so the features and
probabilities calibrated are the served ones. The result is the folder's
``calibration.json``, which ``ReportGenerator`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radreport.data.benchmark import BENCHMARK_SIZE_PX, benchmark_split
from radreport.data.labels import CHEXPERT_LABELS, POSITIVE
from radreport.data.phantoms.generator import generate_study
from radreport.model.calibration import Calibration, logits_from_probs
from radreport.model.ood import MahalanobisScorer
from radreport.model.report import (
    ReportGenerator,
    Variant,
    to_model_input,
    variant_calibration_file,
)
from radreport.model.safety import SafetyNet


@dataclass
class EncodedSplit:
    label_probs: np.ndarray  # (N, L) raw head probabilities
    features: np.ndarray  # (N, C)
    labels: np.ndarray  # (N, L) 0/1 ground truth


def _render(seed: int) -> tuple[np.ndarray, np.ndarray]:
    study = generate_study(seed, BENCHMARK_SIZE_PX)
    labels = np.array([study.labels[name] == POSITIVE for name in CHEXPERT_LABELS], np.uint8)
    return study.image, labels


def encode_seeds(generator: ReportGenerator, seeds: Sequence[int], workers: int = 1,
                 batch_size: int = 32) -> EncodedSplit:
    """Head probabilities and features of phantom studies, through the served encoder."""
    probs: list[np.ndarray] = []
    features: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    size = generator.info.image_size
    with ProcessPoolExecutor(max(1, workers)) as pool:
        rendered = pool.map(_render, seeds, chunksize=16)
        batch: list[np.ndarray] = []
        for image, label in rendered:
            batch.append(to_model_input(image, size)[0])
            labels.append(label)
            if len(batch) == batch_size:
                _encode_batch(generator, batch, probs, features)
                batch = []
        if batch:
            _encode_batch(generator, batch, probs, features)
    return EncodedSplit(np.concatenate(probs), np.concatenate(features), np.stack(labels))


def _encode_batch(generator: ReportGenerator, batch: list[np.ndarray],
                  probs: list[np.ndarray], features: list[np.ndarray]) -> None:
    encoded = generator.onnx.encode(np.stack(batch)[:, None])
    if encoded.features is None:
        raise ValueError("this model's encoder has no 'features' output (a v1 export); "
                         "re-export it to fit the OOD gate")
    probs.append(encoded.label_probs)
    features.append(encoded.features)


@dataclass
class SafetyFit:
    net: SafetyNet
    validate: EncodedSplit
    path: Path
    train_count: int = 0  # training-split studies the OOD scorer's statistics came from


def fit_safety(model_dir: str | Path, validate_count: int = 1000, train_count: int = 2000,
               workers: int = 1, critical_sensitivity: float = 1.0,
               min_specificity: float = 0.9, max_review_rate: float = 0.2,
               ood_flag_rate: float = 0.01, variant: Variant = "fp32",
               pooled_sensitivity: float | None = None) -> SafetyFit:
    """Fit and write ``calibration.json`` into ``model_dir`` (``calibration.<variant>.json``
    for another variant, fitted on that variant's own outputs); see the module docstring."""
    folder = Path(model_dir)
    generator = ReportGenerator(folder, variant)
    validate = encode_seeds(generator, benchmark_split("validate").seeds[:validate_count],
                            workers)
    train = encode_seeds(generator, benchmark_split("train").seeds[:train_count], workers)
    return fit_encoded(folder, generator, validate, train, critical_sensitivity,
                       min_specificity, max_review_rate, ood_flag_rate, variant,
                       pooled_sensitivity)


def fit_encoded(folder: Path, generator: ReportGenerator, validate: EncodedSplit,
                train: EncodedSplit,
                critical_sensitivity: float = 1.0, min_specificity: float = 0.9,
                max_review_rate: float = 0.2, ood_flag_rate: float = 0.01,
                variant: Variant = "fp32", pooled_sensitivity: float | None = None,
                ) -> SafetyFit:
    """The fit itself, on splits already encoded (phantoms above; a real dataset's in
    ``fit_safety_data.py``), written into ``folder`` (the generator's)."""
    calibration = Calibration.fit(
        logits_from_probs(validate.label_probs), validate.labels, generator.info.labels,
        critical_sensitivity=critical_sensitivity, min_specificity=min_specificity,
        max_review_rate=max_review_rate, pooled_sensitivity=pooled_sensitivity)
    scorer = MahalanobisScorer.fit(train.features)
    scorer = scorer.with_threshold(scorer.score(validate.features), ood_flag_rate)
    net = SafetyNet(generator.info.labels, calibration, scorer)
    path = variant_calibration_file(folder, variant)
    net.save(path)
    return SafetyFit(net, validate, path, len(train.labels))
