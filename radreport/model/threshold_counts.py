"""Counting decisions at candidate thresholds on validate, shared by the per-label rules
(``calibration.py``) and the pooled critical thresholds (``pooled_thresholds.py``)."""

from __future__ import annotations

import numpy as np


def below(probs: np.ndarray, targets: np.ndarray, cuts: np.ndarray,
          ) -> tuple[np.ndarray, np.ndarray]:
    """For each cut: how many studies, and how many positives, have prob < cut."""
    order = np.argsort(probs, kind="stable")
    sorted_probs = probs[order]
    positives_prefix = np.concatenate(([0], np.cumsum(targets[order])))
    n_below = np.searchsorted(sorted_probs, cuts, side="left")
    return n_below, positives_prefix[n_below]


def confusion(probs: np.ndarray, targets: np.ndarray, cuts: np.ndarray,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, TN, FN for each cut, predicting positive when prob >= cut."""
    n_below, pos_below = below(probs, targets, cuts)
    n_pos = int(targets.sum())
    tp = n_pos - pos_below
    fn = pos_below
    tn = n_below - pos_below
    fp = (probs.size - n_below) - tp
    return tp, fp, tn, fn


def with_margin(cuts: np.ndarray, index: int) -> float:
    """Halfway from ``cuts[index]`` to the next lower cut: the same validate decisions,
    with a margin for test studies that fall just short of the validate ones."""
    return float(cuts[index] if index == 0 else (cuts[index - 1] + cuts[index]) / 2)
