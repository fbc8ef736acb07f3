"""The 14 CheXpert observations and the label vocabulary shared by data, model and services.

Label values follow CheXpert's convention: 1 positive, 0 negative, -1 uncertain, and a
missing key (or ``None``) for "not mentioned".
"""

from __future__ import annotations

from typing import Final

CHEXPERT_LABELS: Final[tuple[str, ...]] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# Findings a radiologist must never miss; used for critical-finding sensitivity and flags.
CRITICAL_LABELS: Final[frozenset[str]] = frozenset(
    {"Pneumothorax", "Pleural Effusion", "Lung Lesion", "Fracture"}
)

# CheXpert's hierarchy, the part we apply: every parenchymal finding is a lung opacity.
# (Cardiomegaly is not closed into Enlarged Cardiomediastinum: reports and CheXpert's
# labeler treat the two as separate statements.)
PARENT_LABEL: Final[dict[str, str]] = {
    "Edema": "Lung Opacity",
    "Consolidation": "Lung Opacity",
    "Pneumonia": "Lung Opacity",
    "Atelectasis": "Lung Opacity",
    "Lung Lesion": "Lung Opacity",
}

POSITIVE: Final = 1
NEGATIVE: Final = 0
UNCERTAIN: Final = -1

LabelVector = dict[str, int]


def empty_labels() -> LabelVector:
    """All 14 observations negative; callers set the positives."""
    return dict.fromkeys(CHEXPERT_LABELS, NEGATIVE)


def with_parents(positives: set[str]) -> set[str]:
    """Close a set of positive labels under CheXpert's hierarchy."""
    closed = set(positives)
    for label in positives:
        parent = PARENT_LABEL.get(label)
        while parent is not None:
            closed.add(parent)
            parent = PARENT_LABEL.get(parent)
    return closed


def label_vector(positives: set[str]) -> LabelVector:
    """A full 14-label vector from positive labels; 'No Finding' iff nothing but devices."""
    closed = with_parents(positives)
    unknown = closed - set(CHEXPERT_LABELS)
    if unknown:
        raise ValueError(f"unknown CheXpert labels: {sorted(unknown)}")
    vector = empty_labels()
    for label in closed:
        vector[label] = POSITIVE
    if not (closed - {"Support Devices"}):
        vector["No Finding"] = POSITIVE
    return vector
