"""Critical thresholds raised jointly for a pooled sensitivity target (no torch needed)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logit

from radreport.data.labels import CHEXPERT_LABELS, CRITICAL_LABELS
from radreport.model.calibration import Calibration
from radreport.model.pooled_thresholds import pooled_thresholds


def two_labels() -> tuple[np.ndarray, np.ndarray]:
    """Column 0 saturated (positives 0.999, negatives 0.001); column 1 with one hard
    positive at 0.01 among 100 negatives spread over [0, 0.5), its other 19 at 0.9+."""
    rng = np.random.default_rng(0)
    n_neg, n_pos = 100, 20
    p = np.zeros((n_neg + n_pos, 2))
    y = np.zeros_like(p, dtype=int)
    y[n_neg:, :] = 1
    p[:n_neg, 0], p[n_neg:, 0] = 0.001, 0.999
    p[:n_neg, 1] = np.sort(rng.uniform(0.0, 0.5, n_neg))
    p[n_neg:, 1] = np.r_[0.01, rng.uniform(0.9, 1.0, n_pos - 1)]
    return p, y


def test_the_budget_buys_the_false_positives_of_the_hard_positive() -> None:
    p, y = two_labels()
    start = [0.0005, 0.005]  # both keep every positive
    raised = pooled_thresholds(p, y, start, critical=[0, 1], pooled_sensitivity=0.975)
    assert raised[0] == start[0]  # the saturated label cannot move without losing all
    assert p[y[:, 1] == 0, 1].max() < raised[1] < 0.9  # halfway to the next kept positive
    kept = p[:, 1] >= raised[1]
    assert (kept & (y[:, 1] == 0)).sum() == 0
    assert (kept & (y[:, 1] == 1)).sum() == 19  # one positive of 40 spent: 0.975


def test_no_budget_or_no_gain_leaves_the_thresholds() -> None:
    p, y = two_labels()
    start = [0.0005, 0.005]
    assert pooled_thresholds(p, y, start, [0, 1], pooled_sensitivity=1.0) == start
    # removing 5 false positives per lost positive is not worth it at min_gain 6
    p[:95, 1] = 0.001
    p[95:100, 1] = np.linspace(0.02, 0.05, 5)
    assert pooled_thresholds(p, y, start, [0, 1], 0.975, min_gain=6.0) == start
    assert pooled_thresholds(p, y, start, [0, 1], 0.975, min_gain=2.0)[1] > 0.05


def test_shapes_and_target_are_checked() -> None:
    p, y = two_labels()
    with pytest.raises(ValueError, match="shape"):
        pooled_thresholds(p, y[:, :1], [0.5, 0.5], [0, 1], 0.98)
    with pytest.raises(ValueError, match="pooled_sensitivity"):
        pooled_thresholds(p, y, [0.5, 0.5], [0, 1], 0.0)


def test_calibration_fit_raises_a_critical_threshold_and_refits_its_band() -> None:
    rng = np.random.default_rng(1)
    n = 600
    labels = np.zeros((n, len(CHEXPERT_LABELS)), dtype=int)
    probs = np.full(labels.shape, 0.02)
    fracture = CHEXPERT_LABELS.index("Fracture")
    labels[:60, fracture] = 1
    probs[:60, fracture] = np.r_[0.03, rng.uniform(0.9, 0.99, 59)]  # one hard positive
    probs[60:, fracture] = rng.uniform(0.0, 0.4, n - 60)
    others = [j for j, name in enumerate(CHEXPERT_LABELS) if name in CRITICAL_LABELS
              and j != fracture]
    labels[:300, others] = 1
    probs[:300, others] = 0.98
    z = logit(probs)
    plain = Calibration.fit(z, labels, critical_sensitivity=1.0, max_review_rate=1.0)
    pooled = Calibration.fit(z, labels, critical_sensitivity=1.0, max_review_rate=1.0,
                             pooled_sensitivity=0.99)
    before, after = plain.per_label[fracture], pooled.per_label[fracture]
    assert after.threshold > before.threshold
    calibrated = pooled.probabilities(z)[:, fracture]
    false_positives = (calibrated >= after.threshold) & (labels[:, fracture] == 0)
    assert false_positives.sum() < ((plain.probabilities(z)[:, fracture] >= before.threshold)
                                    & (labels[:, fracture] == 0)).sum()
    assert after.band is not None and after.band[0] <= after.threshold <= after.band[1]
    for j in others:
        assert pooled.per_label[j] == plain.per_label[j]
