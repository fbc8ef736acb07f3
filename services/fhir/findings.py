"""Structured findings and review flags: the label head as an independent check of the text.

Our design docs (001, "Quality Assurance Service") run the multi-label head beside the
generated text and flag a study for immediate review when the two disagree on a critical
finding. The text is the report; the head's raw probability is each finding's confidence.

Model v2 serves a safety net (``radreport.model.safety``): the head's decisions at
thresholds chosen on the validate split (``Draft.findings_present``), critical findings in
their uncertain band, and an out-of-distribution gate. Where a draft carries decisions they
replace the fixed ``present_threshold``; older drafts are judged as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from radreport.data.labels import CHEXPERT_LABELS, CRITICAL_LABELS
from radreport.model.safety import (
    DISAGREEMENT_REASON,
    OOD_REASON,
    UNCERTAIN_REASON,
    model_review_reasons,
)
from services.common.schemas import Draft, ImageQuality, StructuredFinding

SEVERITY_WORDS = {"trace": "mild", "small": "mild", "mild": "mild", "minimal": "mild",
                  "moderate": "moderate", "large": "severe", "severe": "severe",
                  "extensive": "severe", "tension": "severe"}
FINDING_LABELS = tuple(label for label in CHEXPERT_LABELS if label != "No Finding")
# Review reason kinds: a fixed set, so they may be metric labels (details follow a ":").
OUT_OF_DISTRIBUTION = OOD_REASON
DISAGREEMENT = DISAGREEMENT_REASON
UNCERTAIN = UNCERTAIN_REASON
LOW_CONFIDENCE = "low confidence"
IMAGE_QUALITY = "image quality"
REASON_KINDS = (OUT_OF_DISTRIBUTION, DISAGREEMENT, UNCERTAIN, LOW_CONFIDENCE, IMAGE_QUALITY)


@dataclass(frozen=True)
class ReviewPolicy:
    present_threshold: float = 0.5  # the head says "present" at or above this
    low_confidence: float = 0.7  # overall agreement below this asks for review


def severity_of(text: str) -> str | None:
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in SEVERITY_WORDS:
            return SEVERITY_WORDS[word]
    return None


def head_present(draft: Draft, policy: ReviewPolicy) -> set[str]:
    """Findings the label head decides present: its calibrated decisions when the draft has
    them, else its raw probability at the policy's fixed threshold."""
    if draft.findings_present is not None:
        return set(draft.findings_present)
    return {label for label in FINDING_LABELS
            if float(draft.label_probs.get(label, 0.0)) >= policy.present_threshold}


def stated_in_text(draft: Draft) -> set[str]:
    return {label for s in draft.sentences for label in s.labels}


def structured_findings(draft: Draft, policy: ReviewPolicy) -> list[StructuredFinding]:
    """Every finding the text states or the head decides present, critical ones first."""
    decided = head_present(draft, policy)
    calibrated = draft.calibrated_probs or {}
    findings = []
    for label in FINDING_LABELS:
        probability = float(draft.label_probs.get(label, 0.0))
        indices = [i for i, s in enumerate(draft.sentences) if label in s.labels]
        if not indices and label not in decided:
            continue
        first = draft.sentences[indices[0]] if indices else None
        findings.append(StructuredFinding(
            finding=label, present=bool(indices), confidence=round(probability, 4),
            calibrated_probability=(round(float(calibrated[label]), 4)
                                    if label in calibrated else None),
            severity=severity_of(first.text) if first else None,  # type: ignore[arg-type]
            bounding_box=first.boxes[0] if first and first.boxes else None,
            is_critical=label in CRITICAL_LABELS, mentioned_in_text=bool(indices),
            sentence_indices=indices))
    return sorted(findings, key=lambda f: (not f.is_critical, -f.confidence))


def agreement(draft: Draft) -> float:
    """Mean support of the head for what the text says: p if stated, 1 - p if not."""
    stated = stated_in_text(draft)
    supports = [p if label in stated else 1.0 - p
                for label in FINDING_LABELS
                for p in [float(draft.label_probs.get(label, 0.0))]]
    return round(sum(supports) / len(supports), 4)


def review_reasons(draft: Draft, quality: ImageQuality | None, policy: ReviewPolicy,
                   ) -> list[str]:
    """Why a radiologist must look before anything else; empty when nothing stands out.

    Kinds (the part before any ":") are a fixed set, counted by metrics.
    """
    reasons = model_review_reasons(head_present(draft, policy), draft.uncertain_findings,
                                   draft.out_of_distribution, stated_in_text(draft))
    if agreement(draft) < policy.low_confidence:
        reasons.append(LOW_CONFIDENCE)
    if quality is not None:
        reasons.extend(f"{IMAGE_QUALITY}: {reason}" for reason in quality.poor_reasons)
    return reasons


def reason_kind(reason: str) -> str:
    """A reason's kind (one of ``REASON_KINDS``): the text before its first ":"."""
    return reason.split(":")[0]
