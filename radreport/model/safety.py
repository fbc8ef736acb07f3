"""The safety net around a draft: calibrated probabilities, thresholds, uncertainty, OOD.

A model folder's ``calibration.json`` (written by ``radreport calibrate`` from the validate
split, never test) holds per-label temperatures, decision thresholds and, for critical
findings, an uncertain band; and the out-of-distribution scorer (Mahalanobis distance of
the encoder's pooled features from the training features, with its threshold). Without
that file, a folder (v1) is read as uncalibrated: raw probabilities, a 0.5 threshold, no
band and no OOD score, which is exactly how v1 was served.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radreport.data.labels import CRITICAL_LABELS
from radreport.model.calibration import Calibration, logits_from_probs, study_confidence
from radreport.model.ood import MahalanobisScorer
from radreport.model.prompt import consistent_findings

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class StudySafety:
    """What the calibrated head and the out-of-distribution gate say of one study."""

    calibrated_probs: dict[str, float]  # per label, calibrated on the validate split
    findings_present: tuple[str, ...]  # labels at or above their validate threshold
    uncertain_findings: tuple[str, ...]  # critical labels inside their uncertain band
    calibrated_confidence: float  # P(every present/absent decision is right)
    ood_score: float | None = None  # Mahalanobis distance of the study's features
    ood_threshold: float | None = None
    out_of_distribution: bool = False

    def to_dict(self, digits: int = 5) -> dict[str, Any]:
        return {"calibrated_probs": {k: round(v, digits)
                                     for k, v in self.calibrated_probs.items()},
                "findings_present": list(self.findings_present),
                "uncertain_findings": list(self.uncertain_findings),
                "calibrated_confidence": round(self.calibrated_confidence, digits),
                "ood_score": None if self.ood_score is None else round(self.ood_score, digits),
                "ood_threshold": (None if self.ood_threshold is None
                                  else round(self.ood_threshold, digits)),
                "out_of_distribution": self.out_of_distribution}



@dataclass(frozen=True)
class SafetyNet:
    """Per-study read-out of the head and the feature vector; see the module docstring."""

    labels: tuple[str, ...]
    calibration: Calibration | None = None
    ood: MahalanobisScorer | None = None

    @classmethod
    def load(cls, path: str | Path, labels: Sequence[str]) -> SafetyNet:
        path = Path(path)
        if not path.exists():
            return cls(tuple(labels))
        data = json.loads(path.read_text())
        calibration = Calibration.from_dict(data["calibration"])
        if tuple(calibration.labels) != tuple(labels):
            raise ValueError(f"{path} calibrates labels {calibration.labels}, the model has "
                             f"{tuple(labels)}")
        ood = MahalanobisScorer.from_dict(data["ood"]) if data.get("ood") else None
        return cls(tuple(labels), calibration, ood)

    def save(self, path: str | Path) -> None:
        if self.calibration is None:
            raise ValueError("nothing to save: no calibration")
        data: dict[str, Any] = {"calibration": self.calibration.to_dict(),
                                "ood": None if self.ood is None else self.ood.to_dict()}
        Path(path).write_text(json.dumps(data, indent=1) + "\n")

    def assess(self, label_probs: np.ndarray, features: np.ndarray | None,
               ) -> list[StudySafety]:
        """One ``StudySafety`` per row of ``label_probs`` (B, L) and ``features`` (B, C)."""
        probs = np.asarray(label_probs, dtype=np.float64)
        if self.calibration is not None:
            probs = self.calibration.probabilities(logits_from_probs(probs))
            present = self.calibration.decisions(probs)
            uncertain = self.calibration.uncertain(probs)
        else:
            present = probs >= DEFAULT_THRESHOLD
            uncertain = [[] for _ in probs]
        present = np.array([consistent_findings(row) for row in present], dtype=bool)
        scores = None
        if self.ood is not None and features is not None:
            scores = self.ood.score(np.asarray(features, dtype=np.float64))
        out = []
        threshold = None if self.ood is None else float(self.ood.threshold)
        for i in range(len(probs)):
            score = None if scores is None else float(scores[i])
            unfamiliar = bool(score is not None and threshold is not None and score > threshold)
            out.append(StudySafety(
                calibrated_probs={k: float(p) for k, p in zip(self.labels, probs[i],
                                                              strict=True)},
                findings_present=tuple(k for k, flag in zip(self.labels, present[i],
                                                            strict=True) if flag),
                uncertain_findings=tuple(uncertain[i]),
                # Calibration holds only for images like the validate split's: for an
                # unfamiliar one no probability is trustworthy, so the study claims none.
                calibrated_confidence=(0.0 if unfamiliar
                                       else float(study_confidence(probs[i], present[i]))),
                ood_score=score, ood_threshold=threshold, out_of_distribution=unfamiliar))
        return out


OOD_REASON = "outside the model's training distribution"
DISAGREEMENT_REASON = "critical finding disagreement"
UNCERTAIN_REASON = "uncertain critical finding"


def model_review_reasons(findings_present: Iterable[str], uncertain_findings: Iterable[str],
                         out_of_distribution: bool, stated: Iterable[str]) -> list[str]:
    """Why the model itself asks a radiologist to look first; empty when it does not.

    ``stated`` are the labels the text asserts. Out of distribution comes first: it makes
    every other output untrustworthy. The services add what the model cannot see (image
    quality, overall agreement); evaluation and services share this, so the rates the
    evaluation reports are the flags the services raise.
    """
    present, said = set(findings_present), set(stated)
    reasons = [OOD_REASON] if out_of_distribution else []
    reasons += [f"{DISAGREEMENT_REASON}: {label} "
                f"({'label head only' if label in present else 'text only'})"
                for label in sorted(CRITICAL_LABELS) if (label in present) != (label in said)]
    reasons += [f"{UNCERTAIN_REASON}: {label}" for label in sorted(uncertain_findings)
                if label in CRITICAL_LABELS]
    return reasons
