"""Structured findings and the label-head/text QA check of our design docs."""

from __future__ import annotations

from radreport.data.labels import CHEXPERT_LABELS
from services.common.schemas import Draft, DraftSentence, ImageQuality, LetterboxInfo
from services.fhir.findings import (
    ReviewPolicy,
    agreement,
    review_reasons,
    severity_of,
    structured_findings,
)

POLICY = ReviewPolicy()


def _draft(sentences: list[tuple[str, list[str]]], probs: dict[str, float]) -> Draft:
    heat = [[1.0 / 256] * 16 for _ in range(16)]
    return Draft(
        findings=" ".join(t for t, _ in sentences), impression="See findings.",
        sentences=[DraftSentence(text=t, section="findings", boxes=[(10, 20, 110, 220)],
                                 heatmap=heat, labels=labels) for t, labels in sentences],
        label_probs={label: probs.get(label, 0.02) for label in CHEXPERT_LABELS},
        token_ids=[5, 6], model_version="m:1",
        letterbox=LetterboxInfo(size=256, scale=0.5, pad_x=0, pad_y=0,
                                original_shape=(512, 512)),
        inference_ms=80.0)


def test_findings_join_the_text_and_the_head_critical_first() -> None:
    draft = _draft([("Mild cardiomegaly.", ["Cardiomegaly"]),
                    ("Large right pleural effusion.", ["Pleural Effusion"])],
                   {"Cardiomegaly": 0.81, "Pleural Effusion": 0.93, "Edema": 0.6})
    findings = structured_findings(draft, POLICY)
    assert [f.finding for f in findings] == ["Pleural Effusion", "Cardiomegaly", "Edema"]
    effusion, cardiomegaly, edema = findings
    assert effusion.is_critical and effusion.present and effusion.severity == "severe"
    assert effusion.bounding_box == (10, 20, 110, 220) and effusion.sentence_indices == [1]
    assert cardiomegaly.severity == "mild" and cardiomegaly.confidence == 0.81
    assert not edema.present and not edema.mentioned_in_text  # the head alone says so


def test_agreeing_head_and_text_need_no_review() -> None:
    draft = _draft([("Large right pleural effusion.", ["Pleural Effusion"])],
                   {"Pleural Effusion": 0.97})
    assert review_reasons(draft, None, POLICY) == []
    assert agreement(draft) > 0.9


def test_a_critical_disagreement_flags_review_both_ways() -> None:
    missed = _draft([("The lungs are clear.", [])], {"Pneumothorax": 0.88})
    assert review_reasons(missed, None, POLICY) == [
        "critical finding disagreement: Pneumothorax (label head only)"]
    unsupported = _draft([("Small left pneumothorax.", ["Pneumothorax"])], {})
    assert review_reasons(unsupported, None, POLICY) == [
        "critical finding disagreement: Pneumothorax (text only)"]


def test_low_confidence_and_poor_images_flag_review() -> None:
    unsure = _draft([("Mild cardiomegaly.", ["Cardiomegaly"])],
                    dict.fromkeys(CHEXPERT_LABELS, 0.45) | {"Pneumothorax": 0.3,
                                                            "Pleural Effusion": 0.3,
                                                            "Lung Lesion": 0.3,
                                                            "Fracture": 0.3})
    assert "low confidence" in review_reasons(unsure, None, POLICY)
    quality = ImageQuality(width=200, height=200, dynamic_range=0.05,
                           poor_reasons=["low_contrast"])
    clean = _draft([("The lungs are clear.", [])], {})
    assert review_reasons(clean, quality, POLICY) == ["image quality: low_contrast"]


def test_severity_words() -> None:
    assert severity_of("Trace left effusion.") == "mild"
    assert severity_of("Moderate edema.") == "moderate"
    assert severity_of("Tension pneumothorax.") == "severe"
    assert severity_of("Cardiomegaly.") is None
