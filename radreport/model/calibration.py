"""Label-head calibration: temperatures, decision thresholds and review bands per label.

NumPy and SciPy only: serving imports this without torch. Everything is fitted on the
validate split, never on test, so that test figures stay an honest estimate. A raw sigmoid
of the head's logits is over- or under-confident; one temperature per label fixes the scale,
so a reported 0.8 means "present in about 80% of such studies". Thresholds then turn
probabilities into decisions: F1-optimal for ordinary findings, high-sensitivity (with a
specificity floor) for the critical ones a radiologist must never miss. Critical labels also
get an uncertain band around their threshold whose studies go to radiologist review, capped
so that review does not swamp the worklist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit

from radreport.data.labels import CHEXPERT_LABELS, CRITICAL_LABELS
from radreport.model.pooled_thresholds import pooled_thresholds
from radreport.model.threshold_counts import below, confusion, with_margin

# T in [0.25, 20]. Below 0.25 a label the head separates perfectly on validate would be
# sharpened towards 0 and 1 without limit (the NLL falls forever), saturating the
# probabilities a test study needs to be compared with a threshold at all.
LOG_T_BOUNDS = (float(np.log(0.25)), 3.0)
NO_POSITIVES_THRESHOLD = 0.5  # nothing on validate to choose from: the uncalibrated default
BISECTION_STEPS = 40


# --- validation helpers -----------------------------------------------------------------

def _binary_pair(probs_or_logits: np.ndarray, targets: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One label's scores and 0/1 targets as flat float64/bool arrays of equal, nonzero size."""
    scores = np.asarray(probs_or_logits, dtype=np.float64)
    y = np.asarray(targets)
    if scores.ndim != 1 or scores.shape != y.shape:
        raise ValueError(f"expected two 1-D arrays of one shape, got {scores.shape} "
                         f"and {y.shape}")
    if scores.size == 0:
        raise ValueError("no samples")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("targets must be 0 or 1")
    return scores, y.astype(bool)


# --- temperature and ECE ------------------------------------------------------------------

def _nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Mean binary NLL of sigmoid(logit / T), written stably as softplus(s) - y * s."""
    s = logits / temperature
    return float(np.mean(np.logaddexp(0.0, s) - targets * s))


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """One label's temperature T > 0 minimising the NLL of sigmoid(logit / T).

    Searched over log T (bounded to ``LOG_T_BOUNDS``) so T stays positive. A label whose
    targets are all 0 or all 1 has no scale to learn (NLL falls forever as T -> 0): 1.0.
    """
    z, y = _binary_pair(logits, targets)
    if y.all() or not y.any():
        return 1.0
    yf = y.astype(np.float64)
    result = minimize_scalar(lambda log_t: _nll(z, yf, float(np.exp(log_t))),
                             bounds=LOG_T_BOUNDS, method="bounded")
    return float(np.exp(result.x))


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 15,
                               ) -> float:
    """ECE of one binary label: sum over equal-width bins of (n_bin / N) |mean p - mean y|.

    Bins are [k/bins, (k+1)/bins); the last one also holds 1.0.
    """
    p, y = _binary_pair(probs, targets)
    if bins < 1:
        raise ValueError("bins must be >= 1")
    index = np.clip(np.floor(p * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    gap = np.bincount(index, weights=p - y, minlength=bins)  # n_bin * (mean p - mean y)
    return float(np.abs(gap[counts > 0]).sum() / p.size)


# --- thresholds ---------------------------------------------------------------------------

def f1_threshold(probs: np.ndarray, targets: np.ndarray) -> float:
    """The threshold maximising F1 on validate (positive when prob >= t).

    Searches the unique probabilities, the lowest on ties (more sensitive), and returns
    the midpoint to the next lower unique probability: the same validate decisions, with a
    margin on both sides. No positives: 0.5.
    """
    p, y = _binary_pair(probs, targets)
    if not y.any():
        return NO_POSITIVES_THRESHOLD
    cuts = np.unique(p)
    tp, fp, _, fn = confusion(p, y, cuts)
    return with_margin(cuts, int(np.argmax(2 * tp / (2 * tp + fp + fn))))


def sensitivity_threshold(probs: np.ndarray, targets: np.ndarray, sensitivity: float = 0.99,
                          min_specificity: float = 0.9) -> float:
    """The highest threshold whose validate sensitivity is >= ``sensitivity``.

    The specificity floor wins: if that threshold's specificity is below
    ``min_specificity``, the lowest threshold reaching the floor is returned instead (the
    most sensitive one the floor allows), so a weak head cannot call everything present.
    Candidates are the unique probabilities and 1.0; the threshold returned lies halfway
    to the next lower one (``with_margin``). No positives: 0.5.
    """
    p, y = _binary_pair(probs, targets)
    if not y.any():
        return NO_POSITIVES_THRESHOLD
    cuts = np.union1d(p, [1.0])
    tp, fp, tn, fn = confusion(p, y, cuts)
    reaches = tp >= sensitivity * (tp + fn) - 1e-9
    t = int(np.flatnonzero(reaches).max())  # the lowest cut keeps every positive: never empty
    n_neg = int(tn[t] + fp[t])
    if n_neg == 0 or tn[t] >= min_specificity * n_neg - 1e-9:
        return with_margin(cuts, t)
    floor = np.flatnonzero(tn >= min_specificity * n_neg - 1e-9)
    return with_margin(cuts, int(floor.min())) if floor.size else 1.0


def uncertain_band(probs: np.ndarray, targets: np.ndarray, threshold: float,
                   sure_precision: float = 0.98, sure_npv: float = 0.999,
                   ) -> tuple[float, float]:
    """The (low, high) band around a critical label's threshold whose studies need review.

    On validate, ``high`` is the lowest cut >= threshold such that studies with
    prob >= high are positive with precision >= ``sure_precision`` (surely present), and
    ``low`` the highest cut <= threshold such that studies with prob < low are negative with
    NPV >= ``sure_npv`` (surely absent). A cut with no studies beyond it qualifies
    vacuously. Probabilities in [low, high) are uncertain. 0 <= low <= threshold <= high <= 1;
    low == threshold == high is an empty band.
    """
    p, y = _binary_pair(probs, targets)
    t = float(np.clip(threshold, 0.0, 1.0))
    high_cuts = np.union1d(p[p >= t], [t, 1.0])
    n_below, pos_below = below(p, y, high_cuts)
    n_above, pos_above = p.size - n_below, int(y.sum()) - pos_below
    sure = (n_above == 0) | (pos_above >= sure_precision * n_above - 1e-9)
    high = float(high_cuts[np.flatnonzero(sure).min()]) if sure.any() else 1.0

    low_cuts = np.union1d(p[p <= t], [0.0, t])
    n_below, pos_below = below(p, y, low_cuts)
    sure = n_below - pos_below >= sure_npv * n_below - 1e-9  # vacuous at 0 studies
    low = float(low_cuts[np.flatnonzero(sure).max()])
    return low, high


# --- the fitted calibration ---------------------------------------------------------------

@dataclass(frozen=True)
class LabelCalibration:
    """One label's fit; ``band`` is (low, high) for critical labels, None otherwise."""

    temperature: float
    threshold: float
    critical: bool
    band: tuple[float, float] | None

    def scaled_band(self, factor: float) -> tuple[float, float] | None:
        """The band with both distances to the threshold scaled by ``factor`` in [0, 1]."""
        if self.band is None:
            return None
        low, high = self.band
        return (self.threshold - factor * (self.threshold - low),
                self.threshold + factor * (high - self.threshold))


def _as_batch(array: np.ndarray, n_labels: int) -> np.ndarray:
    """(B, L) or (L,) as float64 (B, L), refusing a wrong label count."""
    out = np.asarray(array, dtype=np.float64)
    if out.ndim not in (1, 2) or out.shape[-1] != n_labels:
        raise ValueError(f"expected shape (B, {n_labels}) or ({n_labels},), got {out.shape}")
    return np.atleast_2d(out)


@dataclass(frozen=True)
class Calibration:
    """Per-label temperatures, thresholds and critical review bands, in ``labels`` order."""

    labels: tuple[str, ...]
    per_label: tuple[LabelCalibration, ...]

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.per_label):
            raise ValueError(f"{len(self.labels)} labels but {len(self.per_label)} fits")

    @property
    def temperatures(self) -> np.ndarray:
        return np.array([c.temperature for c in self.per_label], dtype=np.float64)

    @property
    def thresholds(self) -> np.ndarray:
        return np.array([c.threshold for c in self.per_label], dtype=np.float64)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated sigmoid(logit / T) per label; (B, L) or (L,) in, same shape out."""
        z = np.asarray(logits, dtype=np.float64)
        _as_batch(z, len(self.labels))
        return np.asarray(expit(z / self.temperatures), dtype=np.float64)

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        """Present where the calibrated probability reaches the label's threshold."""
        p = np.asarray(probs, dtype=np.float64)
        _as_batch(p, len(self.labels))
        return np.asarray(p >= self.thresholds, dtype=bool)

    def uncertain(self, probs: np.ndarray) -> list[list[str]]:
        """Per study, the critical labels whose probability lies in their band [low, high)."""
        flags = self._flags(_as_batch(probs, len(self.labels)), 1.0)
        return [[self.labels[j] for j in np.flatnonzero(row)] for row in flags]

    def _flags(self, p: np.ndarray, factor: float) -> np.ndarray:
        """(B, L) uncertain flags with every band scaled by ``factor``."""
        flags = np.zeros(p.shape, dtype=bool)
        for j, fit in enumerate(self.per_label):
            band = fit.scaled_band(factor)
            if band is not None:
                flags[:, j] = (p[:, j] >= band[0]) & (p[:, j] < band[1])
        return flags

    def _review_rate(self, p: np.ndarray, factor: float) -> float:
        """Share of studies with any uncertain critical label (0 for no studies)."""
        return float(self._flags(p, factor).any(axis=1).mean()) if len(p) else 0.0

    def cap_review_rate(self, probs_validate: np.ndarray, max_rate: float = 0.2,
                        ) -> Calibration:
        """Shrink every band toward its threshold until at most ``max_rate`` of validate
        studies have an uncertain critical label.

        Review is a finite resource: past the cap, flags stop being read. One common factor
        (bisection; bands nest, so the rate grows with it) scales every band's distances.
        """
        if not 0.0 <= max_rate <= 1.0:
            raise ValueError("max_rate must be in [0, 1]")
        p = _as_batch(probs_validate, len(self.labels))
        if self._review_rate(p, 1.0) <= max_rate:
            return self
        ok, too_wide = 0.0, 1.0  # factor 0 is an empty band: rate 0
        for _ in range(BISECTION_STEPS):
            mid = (ok + too_wide) / 2
            if self._review_rate(p, mid) <= max_rate:
                ok = mid
            else:
                too_wide = mid
        per_label = tuple(replace(c, band=c.scaled_band(ok)) for c in self.per_label)
        return replace(self, per_label=per_label)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: plain floats, bools, lists and label names."""
        return {"labels": list(self.labels), "per_label": [
            {"label": name, "temperature": float(c.temperature), "threshold": float(c.threshold),
             "critical": bool(c.critical),
             "band": None if c.band is None else [float(c.band[0]), float(c.band[1])]}
            for name, c in zip(self.labels, self.per_label, strict=True)]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """The inverse of ``to_dict``; refuses entries out of ``labels`` order."""
        labels = tuple(str(name) for name in data["labels"])
        entries = data["per_label"]
        names = tuple(entry.get("label", name) for entry, name in zip(entries, labels,
                                                                       strict=True))
        if names != labels:
            raise ValueError("per_label entries are not in labels order")
        return cls(labels, tuple(LabelCalibration(
            temperature=float(e["temperature"]), threshold=float(e["threshold"]),
            critical=bool(e["critical"]),
            band=None if e["band"] is None else (float(e["band"][0]), float(e["band"][1])))
            for e in entries))

    @classmethod
    def fit(cls, logits: np.ndarray, targets: np.ndarray,
            labels: Sequence[str] = CHEXPERT_LABELS,
            critical: frozenset[str] = CRITICAL_LABELS, critical_sensitivity: float = 0.99,
            min_specificity: float = 0.9, max_review_rate: float = 0.2,
            pooled_sensitivity: float | None = None) -> Calibration:
        """Fit every label on validate logits (N, L) and 0/1 targets (N, L), then cap review.

        ``pooled_sensitivity``: then raise the critical thresholds jointly while the pooled
        critical sensitivity stays at or above it (``pooled_thresholds.py``).
        """
        z = np.asarray(logits, dtype=np.float64)
        y = np.asarray(targets)
        if z.ndim != 2 or z.shape != y.shape or z.shape[1] != len(labels):
            raise ValueError(f"expected logits and targets of shape (N, {len(labels)}), "
                             f"got {z.shape} and {y.shape}")
        per_label = tuple(_fit_label(z[:, j], y[:, j], name in critical,
                                     critical_sensitivity, min_specificity)
                          for j, name in enumerate(labels))
        fitted = cls(tuple(labels), per_label)
        probs = fitted.probabilities(z)  # temperatures only: raising thresholds keeps them
        if pooled_sensitivity is not None:
            fitted = fitted._pooled(probs, y, pooled_sensitivity)
        return fitted.cap_review_rate(probs, max_review_rate)

    def _pooled(self, probs: np.ndarray, targets: np.ndarray, sensitivity: float,
                ) -> Calibration:
        """Critical thresholds raised jointly on validate, each moved one's band refitted."""
        critical = [j for j, c in enumerate(self.per_label) if c.critical]
        raised = pooled_thresholds(probs, targets, [c.threshold for c in self.per_label],
                                   critical, sensitivity)
        per_label = tuple(
            c if t == c.threshold else
            replace(c, threshold=t, band=uncertain_band(probs[:, j], targets[:, j], t))
            for j, (c, t) in enumerate(zip(self.per_label, raised, strict=True)))
        return replace(self, per_label=per_label)


def _fit_label(logits: np.ndarray, targets: np.ndarray, critical: bool,
               critical_sensitivity: float, min_specificity: float) -> LabelCalibration:
    """Temperature first; threshold and band are chosen on the calibrated probabilities."""
    temperature = fit_temperature(logits, targets)
    probs = expit(logits / temperature)
    if not critical:
        return LabelCalibration(temperature, f1_threshold(probs, targets), False, None)
    threshold = sensitivity_threshold(probs, targets, critical_sensitivity, min_specificity)
    return LabelCalibration(temperature, threshold, True,
                            uncertain_band(probs, targets, threshold))


def logits_from_probs(probs: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Invert the sigmoid (the ONNX graph outputs probabilities), clipped to stay finite."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    return np.asarray(logit(p), dtype=np.float64)


def study_confidence(probs: np.ndarray, decisions: np.ndarray) -> float:
    """Probability that every label decision of one study is right: prod of p or 1 - p.

    A calibrated joint probability under independent labels, meant for calibrated
    probabilities. Distinct from the existing "agreement" confidence (the mean support of
    the head for what the text says), which is neither joint nor calibrated.
    """
    p = np.asarray(probs, dtype=np.float64)
    d = np.asarray(decisions, dtype=bool)
    if p.ndim != 1 or p.shape != d.shape:
        raise ValueError(f"expected two 1-D arrays of one shape, got {p.shape} and {d.shape}")
    return float(np.prod(np.where(d, p, 1.0 - p)))
