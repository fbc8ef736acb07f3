"""Structured findings and review flags: the label head as an independent check of the text.

Our design docs (001, "Quality Assurance Service") run the multi-label head beside the
generated text and flag a study for immediate review when the two disagree on a critical
finding. The text is the report; the head's probability is each finding's confidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from radreport.data.labels import CHEXPERT_LABELS, CRITICAL_LABELS
from services.common.schemas import Draft, ImageQuality, StructuredFinding

SEVERITY_WORDS = {"trace": "mild", "small": "mild", "mild": "mild", "minimal": "mild",
                  "moderate": "moderate", "large": "severe", "severe": "severe",
                  "extensive": "severe", "tension": "severe"}
FINDING_LABELS = tuple(label for label in CHEXPERT_LABELS if label != "No Finding")


@dataclass(frozen=True)
class ReviewPolicy:
    present_threshold: float = 0.5  # the head says "present" at or above this
    low_confidence: float = 0.7  # overall agreement below this asks for review


def severity_of(text: str) -> str | None:
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in SEVERITY_WORDS:
            return SEVERITY_WORDS[word]
    return None


def structured_findings(draft: Draft, policy: ReviewPolicy) -> list[StructuredFinding]:
    """Every finding the text states or the head calls present, critical ones first."""
    findings = []
    for label in FINDING_LABELS:
        probability = float(draft.label_probs.get(label, 0.0))
        indices = [i for i, s in enumerate(draft.sentences) if label in s.labels]
        if not indices and probability < policy.present_threshold:
            continue
        first = draft.sentences[indices[0]] if indices else None
        findings.append(StructuredFinding(
            finding=label, present=bool(indices), confidence=round(probability, 4),
            severity=severity_of(first.text) if first else None,  # type: ignore[arg-type]
            bounding_box=first.boxes[0] if first and first.boxes else None,
            is_critical=label in CRITICAL_LABELS, mentioned_in_text=bool(indices),
            sentence_indices=indices))
    return sorted(findings, key=lambda f: (not f.is_critical, -f.confidence))


def agreement(draft: Draft) -> float:
    """Mean support of the head for what the text says: p if stated, 1 - p if not."""
    stated = {label for s in draft.sentences for label in s.labels}
    supports = [p if label in stated else 1.0 - p
                for label in FINDING_LABELS
                for p in [float(draft.label_probs.get(label, 0.0))]]
    return round(sum(supports) / len(supports), 4)


def review_reasons(draft: Draft, quality: ImageQuality | None, policy: ReviewPolicy,
                   ) -> list[str]:
    """Why a radiologist must look before anything else; empty when nothing stands out."""
    reasons = []
    stated = {label for s in draft.sentences for label in s.labels}
    for label in sorted(CRITICAL_LABELS):
        head_says = float(draft.label_probs.get(label, 0.0)) >= policy.present_threshold
        if head_says != (label in stated):
            reasons.append(f"critical finding disagreement: {label} "
                           f"({'label head only' if head_says else 'text only'})")
    if agreement(draft) < policy.low_confidence:
        reasons.append("low confidence")
    if quality is not None:
        reasons.extend(f"image quality: {reason}" for reason in quality.poor_reasons)
    return reasons
