"""Out-of-distribution gate: Mahalanobis distance of the encoder's pooled features.

The ONNX encoder gives one pooled feature vector (C,) per image. An image whose vector lies
far from the training features, measured by Mahalanobis distance under a shrunk covariance
of those features, is one the report model has no business describing. The threshold is
the (1 - flag_rate) quantile of in-distribution *validate* scores, so about ``flag_rate`` of
normal studies are flagged; it is saved with the model in ``calibration.json``. Serving
runs this (numpy and scipy only); ``radreport.eval.ood`` has the OOD test images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg

# --- Mahalanobis scorer ---------------------------------------------------------------------


def _check_features(features: np.ndarray, name: str = "features") -> np.ndarray:
    """A finite float64 (N, C) copy; one (C,) vector becomes (1, C)."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C) or one (C,) vector, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return array


def ledoit_wolf_shrinkage(centered: np.ndarray) -> float:
    """Ledoit-Wolf (2004) optimal weight of the scaled identity, for centered (N, C) data.

    The same estimate as scikit-learn's ``ledoit_wolf_shrinkage``, written out so that the
    gate needs numpy only at run time.
    """
    n, c = centered.shape
    emp_cov = centered.T @ centered / n
    mu = np.trace(emp_cov) / c
    cov_sq = float(np.sum(emp_cov**2))
    # ||S - mu I||_F^2 / C: how far the sample covariance is from the shrinkage target
    delta = (cov_sq - c * mu**2) / c
    # mean over samples of ||x x^T - S||_F^2, / (N C): the noise in the sample covariance
    fourth = float(np.sum(np.sum(centered**2, axis=1) ** 2))
    beta = (fourth / n - cov_sq) / (n * c)
    if delta <= 0:  # S is already a scaled identity
        return 0.0
    return float(min(beta, delta) / delta)


def _readonly(array: np.ndarray) -> np.ndarray:
    out = np.array(array, dtype=np.float64)  # a copy, so the caller's array stays writable
    out.setflags(write=False)
    return out


# eq=False: numpy fields make the generated __eq__/__hash__ raise, not compare.
@dataclass(frozen=True, eq=False)
class MahalanobisScorer:
    """Mahalanobis distance of feature vectors to the training features, and a flag threshold.

    ``threshold`` is ``math.inf`` (nothing flagged) until ``with_threshold`` calibrates it.
    """

    mean: np.ndarray  # (C,)
    precision: np.ndarray  # (C, C), inverse of the shrunk covariance
    threshold: float = math.inf

    def __post_init__(self) -> None:
        mean, precision = _readonly(self.mean), _readonly(self.precision)
        if mean.ndim != 1 or precision.shape != (mean.size, mean.size):
            raise ValueError(
                f"mean must be (C,) and precision (C, C), got {mean.shape} and {precision.shape}")
        if np.isnan(self.threshold):
            raise ValueError("threshold must not be NaN")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "precision", precision)
        object.__setattr__(self, "threshold", float(self.threshold))

    @classmethod
    def fit(cls, features: np.ndarray, shrinkage: float | None = None) -> MahalanobisScorer:
        """Fit on training features (N, C).

        The covariance is shrunk toward ``mu * I`` (mu = mean variance) so that it stays
        invertible and well conditioned when N is not much larger than C, or smaller.
        ``shrinkage=None`` uses the Ledoit-Wolf estimate; a given value is clipped to [0, 1].
        """
        array = np.asarray(features)
        if array.ndim != 2:
            raise ValueError(f"features must be 2-D (N, C), got shape {array.shape}")
        array = _check_features(array)
        if array.shape[0] < 2:
            raise ValueError(f"need at least 2 feature rows to fit, got {array.shape[0]}")
        mean = array.mean(axis=0)
        centered = array - mean
        n, c = centered.shape
        emp_cov = centered.T @ centered / n
        mu = float(np.trace(emp_cov)) / c
        if mu <= 0:
            raise ValueError("features have zero variance: cannot fit a covariance")
        weight = ledoit_wolf_shrinkage(centered) if shrinkage is None else shrinkage
        weight = float(np.clip(weight, 0.0, 1.0))
        cov = (1.0 - weight) * emp_cov + weight * mu * np.eye(c)
        return cls(mean=mean, precision=linalg.pinvh(cov))

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distances (N,) float64 of features (N, C), or (1,) of one (C,) vector."""
        array = _check_features(features)
        if array.shape[1] != self.mean.size:
            raise ValueError(f"expected {self.mean.size} features, got {array.shape[1]}")
        diff = array - self.mean
        quad = np.einsum("ij,jk,ik->i", diff, self.precision, diff)
        return np.sqrt(np.maximum(quad, 0.0))  # round-off can make a tiny quad negative

    def with_threshold(
        self, validate_scores: np.ndarray, flag_rate: float = 0.01
    ) -> MahalanobisScorer:
        """A copy whose threshold flags about ``flag_rate`` of in-distribution studies.

        ``validate_scores`` are ``score`` values of in-distribution validate images: their
        (1 - flag_rate) quantile is the threshold.
        """
        if not 0.0 <= flag_rate < 1.0:
            raise ValueError(f"flag_rate must be in [0, 1), got {flag_rate}")
        scores = np.asarray(validate_scores, dtype=np.float64).ravel()
        if scores.size == 0 or not np.all(np.isfinite(scores)):
            raise ValueError("validate_scores must be non-empty and finite")
        threshold = float(np.quantile(scores, 1.0 - flag_rate))
        return MahalanobisScorer(mean=self.mean, precision=self.precision, threshold=threshold)

    def flags(self, features: np.ndarray) -> np.ndarray:
        """True where a study's image is out of distribution (score > threshold)."""
        return self.score(features) > self.threshold

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for ``calibration.json``; an uncalibrated (inf) threshold is None.

        (``json`` would write inf as ``Infinity``, which is not JSON.)
        """
        return {
            "mean": self.mean.tolist(),
            "precision": self.precision.tolist(),
            "threshold": self.threshold if math.isfinite(self.threshold) else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MahalanobisScorer:
        """Inverse of ``to_dict``."""
        threshold = data.get("threshold")
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            precision=np.asarray(data["precision"], dtype=np.float64),
            threshold=math.inf if threshold is None else float(threshold),
        )
