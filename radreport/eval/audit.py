"""What both audits (``radreport audit fairness`` and ``audit errors``) start from.

The model is run exactly as ``radreport evaluate`` runs its main system (``run_model``,
no clinical context), so every overlapping figure is computed from the same drafts. Each
generated sentence that states a finding is then sorted, once, into:

* **true positive (TP)**: it states a finding the study has, so ``best_reference`` pairs
  it with the reference sentence of that finding; these are exactly the sentences
  ``radreport evaluate`` scores for grounding IoU and pointing.
* **false positive (FP)**: none of the findings it states (positive or uncertain, parents
  closed) is present in the study's labels: an invented finding.
* neither (a finding the labels have but no reference sentence describes): left out.

A reference finding sentence is a **false negative (FN)** when the draft states none of
its labels in any sentence. Attention entropy is normalised to [0, 1] (bits divided by
log2 of the number of map cells), so its gaps read on the same scale as the rates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from radreport.data.labels import CHEXPERT_LABELS, with_parents
from radreport.eval.evaluate import (
    ReferenceSentence,
    SystemRun,
    TestCase,
    best_reference,
    render_cases,
    run_model,
    split_seeds,
    stated_findings,
)
from radreport.eval.metrics import grounding_iou, pointing_hit
from radreport.model.grounding import attention_entropy
from radreport.model.report import DraftReport

MAIN_SYSTEM = "grounded model (ours)"  # the name ``radreport evaluate`` gives it
SentenceKind = Literal["TP", "FP"]


def normalised_entropy(heatmap: np.ndarray) -> float:
    """Attention entropy as a fraction of its maximum: 0 one cell, 1 uniform."""
    cells = int(np.asarray(heatmap).size)
    return attention_entropy(heatmap) / math.log2(cells) if cells > 1 else 0.0


@dataclass
class AuditSentence:
    """One generated finding sentence, classified and scored."""

    study: int  # position in the audited cases
    index: int  # position in its draft
    kind: SentenceKind
    text: str
    stated: frozenset[str]
    entropy: float
    reference: ReferenceSentence | None = None  # TP only
    findings: frozenset[str] = frozenset()  # TP: stated and true (what it is credited for)
    iou: float = math.nan  # TP: against its reference region
    hit: bool = False  # TP: pointing; FP: peak inside any true finding region


@dataclass
class MissedFinding:
    """A reference finding sentence whose labels the draft never states (FN)."""

    study: int
    reference: ReferenceSentence


@dataclass
class AuditData:
    split: str
    cases: list[TestCase]
    run: SystemRun
    sentences: list[AuditSentence] = field(default_factory=list)
    missed: list[MissedFinding] = field(default_factory=list)

    @property
    def drafts(self) -> list[DraftReport]:
        return self.run.drafts


def collect(model_dir: Path, split: str = "test", limit: int | None = None,
            workers: int = 1) -> AuditData:
    """Render the split's studies, draft them as ``radreport evaluate`` does, classify."""
    cases = render_cases(split_seeds(split, limit), workers)
    return analyse(split, cases, run_model(MAIN_SYSTEM, model_dir, cases))


def analyse(split: str, cases: Sequence[TestCase], run: SystemRun) -> AuditData:
    data = AuditData(split, list(cases), run)
    for i, (draft, case) in enumerate(zip(run.drafts, cases, strict=True)):
        data.sentences += classify_sentences(i, draft, case)
        data.missed += missed_findings(i, draft, case)
    return data


def true_labels(case: TestCase) -> frozenset[str]:
    """The study's positive labels, parents closed (as ``stated_findings`` closes them)."""
    return frozenset(with_parents({name for name, value in zip(CHEXPERT_LABELS, case.labels,
                                                                strict=True) if value}))


def findings_region(case: TestCase) -> np.ndarray | None:
    """The union of the study's true finding regions, or None when it has none."""
    masks = [ref.mask for ref in case.positives if ref.mask.any()]
    return np.logical_or.reduce(masks) if masks else None


def classify_sentences(study: int, draft: DraftReport, case: TestCase) -> list[AuditSentence]:
    """The TP and FP finding sentences of one draft (see the module docstring)."""
    truth, region = true_labels(case), findings_region(case)
    out: list[AuditSentence] = []
    for index, sentence in enumerate(draft.sentences):
        stated = stated_findings(sentence.text)
        if not stated:
            continue
        entropy = normalised_entropy(sentence.heatmap)
        ref = best_reference(sentence.text, sentence.section, case)
        if ref is not None:
            out.append(AuditSentence(
                study, index, "TP", sentence.text, stated, entropy, ref, stated & ref.labels,
                grounding_iou(sentence.heatmap, ref.mask), pointing_hit(sentence.heatmap,
                                                                        ref.mask)))
        elif not stated & truth:
            hit = region is not None and pointing_hit(sentence.heatmap, region)
            out.append(AuditSentence(study, index, "FP", sentence.text, stated, entropy,
                                     hit=hit))
    return out


def missed_findings(study: int, draft: DraftReport, case: TestCase) -> list[MissedFinding]:
    said = frozenset().union(*(stated_findings(s.text) for s in draft.sentences))
    return [MissedFinding(study, ref) for ref in case.positives if not ref.labels & said]
