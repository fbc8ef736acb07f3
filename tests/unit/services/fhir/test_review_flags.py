"""Structured findings and the label-head/text QA check of our design docs."""

from __future__ import annotations

from prometheus_client import REGISTRY

from radreport.data.labels import CHEXPERT_LABELS
from services.common.metrics import REVIEW_REASON_KINDS
from services.common.schemas import Draft, DraftSentence, ImageQuality, LetterboxInfo
from services.fhir.findings import (
    REASON_KINDS,
    ReviewPolicy,
    agreement,
    reason_kind,
    review_reasons,
    severity_of,
    structured_findings,
)
from services.fhir.tasks import record_clinical_signals

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


# -- the safety net (model v2): calibrated decisions, uncertain findings, OOD --------------

def _v2(draft: Draft, present: list[str], **change: object) -> Draft:
    return draft.model_copy(update={"findings_present": present, **change})


def test_calibrated_decisions_replace_the_fixed_threshold() -> None:
    # raw 0.42 is below 0.5, but the head's validate threshold calls it present
    draft = _draft([("Small left pneumothorax.", ["Pneumothorax"])], {"Pneumothorax": 0.42})
    assert review_reasons(draft, None, POLICY) == [
        "critical finding disagreement: Pneumothorax (text only)"]
    calibrated = _v2(draft, ["Pneumothorax"], calibrated_probs={"Pneumothorax": 0.66})
    assert review_reasons(calibrated, None, POLICY) == []
    (finding,) = structured_findings(calibrated, POLICY)
    assert (finding.confidence, finding.calibrated_probability) == (0.42, 0.66)
    # and raw 0.6 that the calibrated head rules out is neither listed nor a disagreement
    ruled_out = _v2(_draft([("The lungs are clear.", [])], {"Edema": 0.6,
                                                             "Pneumothorax": 0.55}), [])
    assert structured_findings(ruled_out, POLICY) == []
    assert review_reasons(ruled_out, None, POLICY) == []


def test_a_finding_the_head_decides_is_listed_though_the_text_omits_it() -> None:
    draft = _v2(_draft([("The lungs are clear.", [])], {"Edema": 0.3}), ["Edema"])
    (edema,) = structured_findings(draft, POLICY)
    assert edema.finding == "Edema" and not edema.mentioned_in_text
    assert edema.calibrated_probability is None  # the draft carries no calibrated probs


def test_uncertain_critical_findings_and_ood_flag_review() -> None:
    draft = _v2(_draft([("Large right pleural effusion.", ["Pleural Effusion"])],
                       {"Pleural Effusion": 0.97}), ["Pleural Effusion"],
                uncertain_findings=["Pneumothorax"])
    assert review_reasons(draft, None, POLICY) == ["uncertain critical finding: Pneumothorax"]
    flagged = draft.model_copy(update={"out_of_distribution": True, "ood_score": 40.0,
                                       "ood_threshold": 20.0})
    reasons = review_reasons(flagged, None, POLICY)
    assert reasons == ["outside the model's training distribution",
                       "uncertain critical finding: Pneumothorax"]
    assert {reason_kind(r) for r in reasons} <= set(REASON_KINDS)


def test_every_reason_kind_is_a_known_metric_label() -> None:
    assert set(REASON_KINDS) == set(REVIEW_REASON_KINDS)


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_record_clinical_signals_counts_ood_and_reason_kinds_only() -> None:
    draft = _v2(_draft([("The lungs are clear.", [])], {}), ["Edema"],
                ood_score=33.0, ood_threshold=20.0, out_of_distribution=True,
                uncertain_findings=["Pneumothorax"])
    reasons = review_reasons(draft, None, POLICY)
    before = {"flagged": _sample("radreport_ood_flagged_total"),
              "scores": _sample("radreport_ood_score_count"),
              "ood": _sample("radreport_review_required_total",
                             {"reason": "outside the model's training distribution"}),
              "uncertain": _sample("radreport_review_required_total",
                                   {"reason": "uncertain critical finding"}),
              "edema": _sample("radreport_findings_total",
                               {"finding": "Edema", "source": "label_head"})}
    record_clinical_signals(draft, reasons, POLICY)
    assert _sample("radreport_ood_flagged_total") == before["flagged"] + 1
    assert _sample("radreport_ood_score_count") == before["scores"] + 1
    assert _sample("radreport_review_required_total",
                   {"reason": "outside the model's training distribution"}) == before["ood"] + 1
    assert _sample("radreport_review_required_total",
                   {"reason": "uncertain critical finding"}) == before["uncertain"] + 1
    assert _sample("radreport_findings_total",
                   {"finding": "Edema", "source": "label_head"}) == before["edema"] + 1
    reason_values = {s.labels["reason"] for m in REGISTRY.collect()
                     if m.name == "radreport_review_required" for s in m.samples}
    assert reason_values == set(REVIEW_REASON_KINDS)  # never a label name or free text
