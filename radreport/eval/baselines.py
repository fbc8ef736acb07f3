"""Baseline (a) of our design docs: a report filled in from the label head's predictions.

No decoder, no grounding: each label whose probability clears the threshold contributes a
fixed positive sentence, the common findings that do not contribute a pertinent negative,
and the impression lists the positives. It answers "how much does free-text generation add
over a classifier with templates?" on the NLG metrics, and its clinical F1 is the label
head's own, read back through the same labeler as every other system.
"""

from __future__ import annotations

from collections.abc import Mapping

# label -> (findings sentence when positive, impression phrase, pertinent negative or None)
TEMPLATES: dict[str, tuple[str, str, str | None]] = {
    "Support Devices": ("Support devices are in place.", "Support devices in place", None),
    "Lung Lesion": ("There is a pulmonary nodule or mass.", "Pulmonary nodule or mass",
                    "No suspicious pulmonary nodule or mass."),
    "Consolidation": ("There is focal consolidation.", "Consolidation",
                      "No focal consolidation is seen."),
    "Pneumonia": ("The appearance is concerning for pneumonia.", "Findings concerning for "
                  "pneumonia", None),
    "Atelectasis": ("There is atelectasis.", "Atelectasis", None),
    "Lung Opacity": ("There is an airspace opacity.", "Airspace opacity", None),
    "Edema": ("There is pulmonary edema.", "Pulmonary edema", "No pulmonary edema."),
    "Pleural Effusion": ("There is a pleural effusion.", "Pleural effusion",
                         "No pleural effusion."),
    "Pneumothorax": ("There is a pneumothorax.", "Pneumothorax", "There is no pneumothorax."),
    "Pleural Other": ("There is pleural thickening.", "Pleural thickening", None),
    "Cardiomegaly": ("The heart is enlarged.", "Cardiomegaly", "Heart size is normal."),
    "Enlarged Cardiomediastinum": ("The cardiomediastinal silhouette is enlarged.",
                                   "Enlarged cardiomediastinal silhouette",
                                   "The mediastinal contours are normal."),
    "Fracture": ("There is a rib fracture.", "Rib fracture", "No displaced rib fracture."),
}
NORMAL_IMPRESSION = "No acute cardiopulmonary process."
# Parents are implied by a child's sentence; saying them again reads as a second finding.
IMPLIED_BY = {"Lung Opacity": ("Lung Lesion", "Consolidation", "Pneumonia", "Atelectasis",
                               "Edema")}


def template_report(label_probs: Mapping[str, float], threshold: float = 0.5) -> str:
    """``FINDINGS: ... IMPRESSION: ...`` from thresholded label probabilities."""
    positive = {name for name, p in label_probs.items() if p >= threshold}
    for parent, children in IMPLIED_BY.items():
        if positive & set(children):
            positive.discard(parent)
    findings: list[str] = []
    impression: list[str] = []
    for label, (sentence, phrase, negative) in TEMPLATES.items():
        if label in positive:
            findings.append(sentence)
            impression.append(phrase + ".")
        elif negative is not None:
            findings.append(negative)
    if not impression:
        impression.append(NORMAL_IMPRESSION)
    return f"FINDINGS: {' '.join(findings)}\n\nIMPRESSION: {' '.join(impression)}"
