"""``radreport audit errors``: the error analysis of seed 000 §3.7.

Built on the sentence classes of ``radreport.eval.audit`` (TP, FP and FN findings):

* **Per-finding grounding accuracy**: each TP sentence counts for every finding it states
  that its reference sentence states (parents included, so "Lung Opacity" pools its
  children); per finding the mean IoU, pointing rate and mean normalised entropy.
* **Attention right, text wrong**: an FP sentence (it names a finding the study does not
  have) whose map peaks inside one of the study's true finding regions: the model looked
  at a real abnormality and called it something else.
* **Text right, attention wrong**: a TP sentence whose map peaks outside the region of the
  finding it correctly states (a pointing-game miss).
* **Entropy of correct and incorrect predictions**: normalised entropy of TP against FP
  sentences.

The overall IoU and pointing rate pool the same sentences ``radreport evaluate`` scores.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from radreport.data.labels import CHEXPERT_LABELS
from radreport.eval.audit import AuditData, AuditSentence


@dataclass
class FindingRow:
    finding: str
    tp_sentences: int = 0
    fp_sentences: int = 0
    missed: int = 0  # FN reference sentences stating it
    iou: float = math.nan  # mean over its TP sentences
    pointing: float = math.nan
    entropy: float = math.nan


@dataclass
class ErrorSummary:
    studies: int
    tp_sentences: int
    fp_sentences: int
    missed: int
    grounding_iou: float
    pointing: float
    attention_right_text_wrong: int
    text_right_attention_wrong: int
    entropy: dict[str, dict[str, float]]  # "TP"/"FP" -> n, mean, median
    findings: list[FindingRow] = field(default_factory=list)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def attention_right_text_wrong(data: AuditData) -> list[AuditSentence]:
    return [s for s in data.sentences if s.kind == "FP" and s.hit]


def text_right_attention_wrong(data: AuditData) -> list[AuditSentence]:
    return [s for s in data.sentences if s.kind == "TP" and not s.hit]


def entropies(data: AuditData, kind: str) -> list[float]:
    return [s.entropy for s in data.sentences if s.kind == kind]


def per_finding(data: AuditData) -> list[FindingRow]:
    """Grounding accuracy and error counts per CheXpert finding with any sentence."""
    rows = []
    for name in CHEXPERT_LABELS:
        tp = [s for s in data.sentences if s.kind == "TP" and name in s.findings]
        fp = sum(s.kind == "FP" and name in s.stated for s in data.sentences)
        missed = sum(name in m.reference.labels for m in data.missed)
        if tp or fp or missed:
            rows.append(FindingRow(name, len(tp), fp, missed, _mean([s.iou for s in tp]),
                                   _mean([float(s.hit) for s in tp]),
                                   _mean([s.entropy for s in tp])))
    return rows


def _describe(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "mean": _mean(values),
            "median": float(statistics.median(values)) if values else math.nan}


def summarise(data: AuditData) -> ErrorSummary:
    tp = [s for s in data.sentences if s.kind == "TP"]
    return ErrorSummary(
        studies=len(data.cases), tp_sentences=len(tp),
        fp_sentences=sum(s.kind == "FP" for s in data.sentences), missed=len(data.missed),
        grounding_iou=_mean([s.iou for s in tp]), pointing=_mean([float(s.hit) for s in tp]),
        attention_right_text_wrong=len(attention_right_text_wrong(data)),
        text_right_attention_wrong=len(text_right_attention_wrong(data)),
        entropy={kind: _describe(entropies(data, kind)) for kind in ("TP", "FP")},
        findings=per_finding(data))
