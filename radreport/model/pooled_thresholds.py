"""Critical thresholds chosen jointly, for a pooled sensitivity target (issue 15).

The per-label rule keeps every validate positive of each critical label. When a few
positives of a label are all but invisible to the model (a rib fracture under an effusion),
keeping them costs that label most of its specificity. The goal is pooled: critical
sensitivity over all critical positives. So this spends a small budget of validate misses
where each miss buys the most false positives, and leaves every other threshold alone:
- start from the per-label thresholds (the most sensitive ones);
- repeatedly raise one label's threshold past its next lowest positive(s), choosing the
  move that removes the most validate false positives per positive lost, while the pooled
  sensitivity stays >= the target and each move removes at least ``min_gain`` false
  positives per positive lost;
- a new threshold lies halfway between the next kept positive and the highest probability
  below it, the same margin as the per-label rule.
A saturated label (every positive at ~1.0) can only drop all its positives at once, which
the budget forbids, so its threshold stays where it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from radreport.model.threshold_counts import confusion, with_margin


@dataclass(frozen=True)
class _Move:
    label: int
    threshold: float
    lost: int  # positives the move drops
    removed: int  # false positives it removes


def pooled_thresholds(probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[float],
                      critical: Sequence[int], pooled_sensitivity: float,
                      min_gain: float = 2.0) -> list[float]:
    """``thresholds`` with the ``critical`` columns raised jointly (see the module doc).

    ``probs`` are calibrated validate probabilities (N, L), ``targets`` 0/1 (N, L). The
    pooled sensitivity is counted at the starting thresholds too: moves never lower it
    below ``pooled_sensitivity`` nor below where it started.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets).astype(bool)
    if p.ndim != 2 or p.shape != y.shape or len(thresholds) != p.shape[1]:
        raise ValueError(f"expected probs and targets of shape (N, {len(thresholds)}), "
                         f"got {p.shape} and {y.shape}")
    if not 0.0 < pooled_sensitivity <= 1.0:
        raise ValueError("pooled_sensitivity must be in (0, 1]")
    out = [float(t) for t in thresholds]
    total = int(sum(y[:, j].sum() for j in critical))
    missed = sum(int((y[:, j] & (p[:, j] < out[j])).sum()) for j in critical)
    budget = max(int(np.floor(total * (1.0 - pooled_sensitivity) + 1e-9)), missed)
    while True:
        moves = [m for j in critical for m in _moves(p[:, j], y[:, j], j, out[j])
                 if missed + m.lost <= budget and m.removed >= min_gain * m.lost]
        if not moves:
            return out
        best = max(moves, key=lambda m: (m.removed / m.lost, -m.lost))
        out[best.label] = best.threshold
        missed += best.lost


def _moves(p: np.ndarray, y: np.ndarray, label: int, threshold: float) -> list[_Move]:
    """Each higher threshold that keeps the positives from one of them upwards."""
    cuts = np.unique(p)
    tp, fp, _, _ = confusion(p, y, cuts)
    tp_now, fp_now, _, _ = confusion(p, y, np.array([threshold]))
    moves = []
    for target in np.unique(p[y & (p >= threshold)])[1:]:  # keep positives >= target
        index = int(np.searchsorted(cuts, target))
        new = with_margin(cuts, index)  # decides as ``target`` does: p >= new iff p >= target
        lost = int(tp_now[0] - tp[index])
        if new > threshold and lost:
            moves.append(_Move(label, new, lost, int(fp_now[0] - fp[index])))
    return moves
