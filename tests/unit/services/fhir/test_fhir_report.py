"""The FHIR formatter: a hand-made draft as an R4B Bundle, parsed back with fhir.resources."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from radreport.data.labels import CHEXPERT_LABELS
from services.common.schemas import (
    Draft,
    DraftSentence,
    GenerateRequest,
    LetterboxInfo,
    PatientMetadata,
    StructuredFinding,
)
from services.fhir.findings import ReviewPolicy, structured_findings
from services.fhir.report import (
    SNOMED_FINDINGS,
    FhirContext,
    build_bundle,
    diagnostic_report_status,
    report_text,
    resource_uuid,
)

API = "http://127.0.0.1:8080/api/v1"
REPORT_ID = "6f1c2b9e-5d4a-4c3b-9a8e-7f6d5c4b3a21"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1234567890"
MODEL = "radreport-vit-gpt:0.3.1"
ISSUED = datetime(2025, 3, 4, 12, 30, 15, tzinfo=UTC)


def _heatmap(peak: tuple[int, int]) -> list[list[float]]:
    """A 16x16 map summing to 1, half its mass on one cell."""
    grid = [[0.5 / 255] * 16 for _ in range(16)]
    grid[peak[0]][peak[1]] = 0.5
    return grid


@pytest.fixture()
def draft() -> Draft:
    return Draft(
        findings="Small right pleural effusion with adjacent atelectasis. "
                 "The heart is mildly enlarged.",
        impression="Small right pleural effusion. Mild cardiomegaly.",
        sentences=[
            DraftSentence(text="Small right pleural effusion with adjacent atelectasis.",
                          section="findings", boxes=[(120, 1480, 820, 1990)],
                          heatmap=_heatmap((12, 3)),
                          labels=["Pleural Effusion", "Atelectasis"]),
            DraftSentence(text="The heart is mildly enlarged.", section="findings",
                          boxes=[(700, 900, 1650, 1700)], heatmap=_heatmap((9, 8)),
                          labels=["Cardiomegaly"]),
            DraftSentence(text="Small right pleural effusion. Mild cardiomegaly.",
                          section="impression", boxes=[(120, 1480, 820, 1990)],
                          heatmap=_heatmap((12, 3)),
                          labels=["Pleural Effusion", "Cardiomegaly"]),
        ],
        label_probs={"Pleural Effusion": 0.88, "Atelectasis": 0.61, "Cardiomegaly": 0.74,
                     "Pneumothorax": 0.57, "Support Devices": 0.03},
        token_ids=[5, 81, 33, 2],
        model_version=MODEL,
        letterbox=LetterboxInfo(size=384, scale=0.1745, pad_x=5.3, pad_y=0.0,
                                original_shape=(2200, 2140)),
        attention_entropy=2.7,
        inference_ms=184.2,
    )


@pytest.fixture()
def findings() -> list[StructuredFinding]:
    return [
        StructuredFinding(finding="Pneumothorax", present=False, confidence=0.57,
                          is_critical=True, mentioned_in_text=False),
        StructuredFinding(finding="Pleural Effusion", present=True, confidence=0.88,
                          severity="mild", bounding_box=(120, 1480, 820, 1990),
                          is_critical=True, mentioned_in_text=True, sentence_indices=[0, 2]),
        StructuredFinding(finding="Cardiomegaly", present=True, confidence=0.74,
                          severity="mild", bounding_box=(700, 900, 1650, 1700),
                          is_critical=False, mentioned_in_text=True, sentence_indices=[1, 2]),
        StructuredFinding(finding="Atelectasis", present=True, confidence=0.61,
                          bounding_box=(120, 1480, 820, 1990), is_critical=False,
                          mentioned_in_text=True, sentence_indices=[0]),
    ]


def _overlays(n: int) -> list[str]:
    return [f"{API}/reports/{REPORT_ID}/sentences/{i}/overlay.png" for i in range(n)]


@pytest.fixture()
def ctx() -> FhirContext:
    return FhirContext(report_id=REPORT_ID, study_id="STUDY-12345",
                       study_instance_uid=STUDY_UID, subject_reference=None,
                       encounter_reference=None, issued=ISSUED, effective=None,
                       base_url=API, software_name="radreport", software_version="0.1.0")


@pytest.fixture()
def bundle(draft: Draft, findings: list[StructuredFinding], ctx: FhirContext,
           ) -> dict[str, Any]:
    return build_bundle(draft, findings, _overlays(len(draft.sentences)), ctx)


def _by_url(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def _of_type(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _report(bundle: dict[str, Any]) -> dict[str, Any]:
    (report,) = _of_type(bundle, "DiagnosticReport")
    return report


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)
    else:
        yield key, node


# -- the bundle as a whole ---------------------------------------------------------------

def test_bundle_round_trips_through_fhir_resources_r4b(bundle: dict[str, Any]) -> None:
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection"
    assert json.loads(parsed.model_dump_json()) == bundle


def test_entries_and_deterministic_urn_uuids(bundle: dict[str, Any], draft: Draft,
                                             findings: list[StructuredFinding]) -> None:
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds[0] == "DiagnosticReport"
    assert kinds.count("Observation") == len(findings)
    assert kinds.count("Media") == len(draft.sentences)
    assert kinds.count("Device") == 1
    assert kinds.count("Provenance") == 1
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls)
    for entry in bundle["entry"]:
        assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
    assert _report(bundle)["id"] == resource_uuid(REPORT_ID, "DiagnosticReport")
    # every urn:uuid reference resolves inside the bundle
    for key, value in _walk(bundle):
        if key == "reference" and value.startswith("urn:uuid:"):
            assert value in urls


def test_same_input_gives_same_json(draft: Draft, findings: list[StructuredFinding],
                                    ctx: FhirContext) -> None:
    overlays = _overlays(len(draft.sentences))
    first = json.dumps(build_bundle(draft, findings, overlays, ctx))
    assert json.dumps(build_bundle(draft, findings, overlays, ctx)) == first
    other = json.dumps(build_bundle(draft, findings, overlays, replace(ctx, report_id="r-2")))
    assert resource_uuid(REPORT_ID, "DiagnosticReport") not in other


# -- DiagnosticReport --------------------------------------------------------------------

def test_diagnostic_report_fields(bundle: dict[str, Any], draft: Draft) -> None:
    report = _report(bundle)
    assert report["status"] == "preliminary"
    assert report["code"]["coding"] == [
        {"system": "http://loinc.org", "code": "36554-4", "display": "XR Chest Single view"}]
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["category"][0]["coding"][0]["system"] == (
        "http://terminology.hl7.org/CodeSystem/v2-0074")
    assert report["conclusion"] == draft.impression
    assert report["issued"] == "2025-03-04T12:30:15Z"
    assert "effectiveDateTime" not in report
    assert report["identifier"] == [{"system": f"{API}/reports", "value": REPORT_ID}]
    assert report["meta"]["security"][0]["code"] == "AIAST"
    (form,) = report["presentedForm"]
    body = base64.b64decode(form["data"])
    assert form["contentType"].startswith("text/plain")
    assert body.decode("utf-8") == report_text(draft)
    assert report_text(draft) == f"FINDINGS: {draft.findings}\n\nIMPRESSION: {draft.impression}"
    assert form["size"] == len(body)
    assert base64.b64decode(form["hash"]) == hashlib.sha1(body).digest()
    assert "AI-generated draft" in form["title"]
    assert "AI-generated draft" in report["text"]["div"]


def test_results_resolve_to_the_observations(bundle: dict[str, Any],
                                             findings: list[StructuredFinding]) -> None:
    resources = _by_url(bundle)
    results = [resources[ref["reference"]] for ref in _report(bundle)["result"]]
    assert [r["resourceType"] for r in results] == ["Observation"] * len(findings)
    assert [r["code"]["text"] for r in results] == [f.finding for f in findings]
    # a draft without the safety net (model v1 before calibration) gets no study-level ones
    assert "calibrated-confidence" not in json.dumps(bundle)
    assert "ood-score" not in json.dumps(bundle)


# -- the safety net (model v2) -----------------------------------------------------------

def _safe(draft: Draft, **change: Any) -> Draft:
    return draft.model_copy(update={
        "calibrated_probs": {"Pleural Effusion": 0.91, "Atelectasis": 0.55,
                             "Cardiomegaly": 0.7, "Pneumothorax": 0.2},
        "findings_present": ["Pleural Effusion", "Atelectasis", "Cardiomegaly",
                             "Lung Opacity"],
        "calibrated_confidence": 0.83, "ood_score": 12.5, "ood_threshold": 20.0,
        "out_of_distribution": False, **change})


def _study_level(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The study-level Observations DiagnosticReport.result names, by their code."""
    resources = _by_url(bundle)
    found = {}
    for ref in _report(bundle)["result"]:
        coding = resources[ref["reference"]]["code"]["coding"][0]
        if coding["system"] == "https://radreport.example/fhir/CodeSystem/observation":
            found[coding["code"]] = resources[ref["reference"]]
    return found


def test_study_level_calibrated_confidence_and_ood_score(draft: Draft, ctx: FhirContext,
                                                         ) -> None:
    safe = _safe(draft)
    findings = structured_findings(safe, ReviewPolicy())
    bundle = build_bundle(safe, findings, _overlays(len(draft.sentences)), ctx)
    Bundle.model_validate(bundle)
    study = _study_level(bundle)
    assert set(study) == {"calibrated-confidence", "ood-score"}
    assert study["calibrated-confidence"]["valueQuantity"]["value"] == pytest.approx(83.0)
    assert study["calibrated-confidence"]["valueQuantity"]["code"] == "%"
    ood = study["ood-score"]
    assert ood["valueQuantity"] == {"value": 12.5, "unit": "1",
                                    "system": "http://unitsofmeasure.org", "code": "1"}
    assert ood["referenceRange"][0]["high"]["value"] == 20.0
    assert ood["interpretation"][0]["coding"][0]["code"] == "N"
    assert "note" not in ood
    for observation in study.values():
        assert observation["meta"]["security"][0]["code"] == "AIAST"
        assert observation["status"] == "preliminary"
    (provenance,) = _of_type(bundle, "Provenance")
    targets = {t["reference"] for t in provenance["target"]}
    assert {f"urn:uuid:{o['id']}" for o in study.values()} <= targets
    assert "outside the model" not in _report(bundle)["text"]["div"]


def test_an_out_of_distribution_study_says_so(draft: Draft, ctx: FhirContext) -> None:
    flagged = _safe(draft, ood_score=31.0, out_of_distribution=True,
                    calibrated_confidence=0.0)
    bundle = build_bundle(flagged, structured_findings(flagged, ReviewPolicy()),
                          _overlays(len(draft.sentences)), ctx)
    Bundle.model_validate(bundle)
    ood = _study_level(bundle)["ood-score"]
    (interpretation,) = ood["interpretation"]
    assert interpretation["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        "code": "H", "display": "High"}
    assert interpretation["text"] == "outside the model's training distribution"
    assert "outside the model's training distribution" in ood["note"][0]["text"]
    assert "outside the model&#x27;s training distribution" in _report(bundle)["text"]["div"]
    assert _report(bundle)["conclusion"] == draft.impression  # the text stays the model's


def test_each_finding_carries_its_calibrated_probability(draft: Draft, ctx: FhirContext,
                                                         ) -> None:
    safe = _safe(draft)
    findings = structured_findings(safe, ReviewPolicy())
    bundle = build_bundle(safe, findings, _overlays(len(draft.sentences)), ctx)
    observations = {o["code"]["text"]: o for o in _of_type(bundle, "Observation")}
    confidence, calibrated, _severity = observations["Pleural Effusion"]["component"]
    assert confidence["valueQuantity"]["value"] == pytest.approx(88.0)  # the raw head
    assert calibrated["code"]["coding"][0]["code"] == "calibrated-probability"
    assert calibrated["valueQuantity"]["value"] == pytest.approx(91.0)
    # the head decides Lung Opacity present though the text does not state it
    opacity = observations["Lung Opacity"]
    assert [c["code"]["coding"][0]["code"] for c in opacity["component"]] == ["confidence"]
    assert "Not stated in the report text" in opacity["note"][0]["text"]


def test_media_one_per_sentence_with_its_text_and_overlay(bundle: dict[str, Any],
                                                          draft: Draft) -> None:
    resources = _by_url(bundle)
    media = _report(bundle)["media"]
    assert len(media) == len(draft.sentences)
    for item, sentence, url in zip(media, draft.sentences, _overlays(len(media)), strict=True):
        assert item["comment"] == sentence.text
        linked = resources[item["link"]["reference"]]
        assert linked["resourceType"] == "Media"
        assert linked["content"] == {"contentType": "image/png", "url": url,
                                     "title": linked["content"]["title"]}
        assert linked["meta"]["security"][0]["code"] == "AIAST"


def test_imaging_study_by_study_instance_uid(bundle: dict[str, Any]) -> None:
    assert _report(bundle)["imagingStudy"] == [{
        "type": "ImagingStudy",
        "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}}]


def test_imaging_study_by_study_id_without_uid(draft: Draft, ctx: FhirContext) -> None:
    bundle = build_bundle(draft, [], _overlays(len(draft.sentences)),
                          replace(ctx, study_instance_uid=None))
    assert _report(bundle)["imagingStudy"][0]["identifier"] == {
        "system": f"{API}/studies", "value": "STUDY-12345"}
    assert "result" not in _report(bundle)
    Bundle.model_validate(bundle)


# -- subject, encounter, PHI -------------------------------------------------------------

def test_subject_and_encounter_omitted_when_not_given(bundle: dict[str, Any]) -> None:
    keys = {key for key, _ in _walk(bundle)}
    assert "subject" not in json.dumps(bundle)
    assert "encounter" not in keys


def test_subject_and_encounter_present_when_given(draft: Draft,
                                                  findings: list[StructuredFinding],
                                                  ctx: FhirContext) -> None:
    ctx = replace(ctx, subject_reference="Patient/123", encounter_reference="Encounter/e-9",
                  effective=ISSUED - timedelta(minutes=20))
    bundle = build_bundle(draft, findings, _overlays(len(draft.sentences)), ctx)
    for resource in [_report(bundle), *_of_type(bundle, "Observation")]:
        assert resource["subject"] == {"reference": "Patient/123"}
        assert resource["encounter"] == {"reference": "Encounter/e-9"}
        assert resource["effectiveDateTime"] == "2025-03-04T12:10:15Z"
    for media in _of_type(bundle, "Media"):
        assert media["subject"] == {"reference": "Patient/123"}
    Bundle.model_validate(bundle)


def test_no_phi_beyond_the_given_references(draft: Draft, findings: list[StructuredFinding],
                                            ctx: FhirContext) -> None:
    request = GenerateRequest(study_id="STUDY-12345", image_path="cxr.dcm",
                              subject_reference="Patient/123",
                              patient_metadata=PatientMetadata(age=71, sex="F"),
                              clinical_indication="Dyspnea, John Doe, MRN 0042")
    ctx = replace(ctx, subject_reference=request.subject_reference)
    bundle = build_bundle(draft, findings, _overlays(len(draft.sentences)), ctx)
    text = json.dumps(bundle)
    assert "John" not in text and "0042" not in text and "Dyspnea" not in text
    assert '"name"' not in json.dumps([r for r in (e["resource"] for e in bundle["entry"])
                                       if r["resourceType"] != "Device"])
    patient_strings = {v for _, v in _walk(bundle) if isinstance(v, str) and "Patient" in v}
    assert patient_strings == {"Patient/123"}


# -- Observations ------------------------------------------------------------------------

def test_observation_codes_values_and_confidence(bundle: dict[str, Any]) -> None:
    observations = {o["code"]["text"]: o for o in _of_type(bundle, "Observation")}
    effusion = observations["Pleural Effusion"]
    assert effusion["status"] == "preliminary"
    assert effusion["category"][0]["coding"][0]["code"] == "imaging"
    assert {"system": "http://snomed.info/sct", "code": "60046008",
            "display": "Pleural effusion"} in effusion["code"]["coding"]
    assert effusion["valueCodeableConcept"]["coding"][0]["code"] == "52101004"
    assert effusion["bodySite"]["coding"][0]["code"] == "51185008"
    confidence, severity = effusion["component"]
    assert confidence["code"]["coding"][0]["code"] == "confidence"
    assert confidence["valueQuantity"]["value"] == pytest.approx(88.0)
    assert confidence["valueQuantity"]["code"] == "%"
    assert severity["code"]["coding"][0]["code"] == "246112005"
    assert severity["valueCodeableConcept"]["coding"][0]["code"] == "255604002"
    assert "note" not in effusion
    resources = _by_url(bundle)
    derived = [resources.get(ref.get("reference", ""), ref) for ref in effusion["derivedFrom"]]
    assert [d.get("resourceType", d.get("type")) for d in derived] == [
        "Media", "Media", "ImagingStudy"]

    pneumothorax = observations["Pneumothorax"]  # the label head's, not the text's
    assert pneumothorax["valueCodeableConcept"]["coding"][0]["code"] == "2667000"
    assert "Not stated in the report text" in pneumothorax["note"][0]["text"]
    assert len(pneumothorax["component"]) == 1


def test_every_chexpert_label_builds_a_valid_observation(draft: Draft,
                                                         ctx: FhirContext) -> None:
    findings = [StructuredFinding(finding=label, present=i % 2 == 0, confidence=i / 14,
                                  is_critical=False, mentioned_in_text=True)
                for i, label in enumerate(CHEXPERT_LABELS)]
    bundle = build_bundle(draft, findings, _overlays(len(draft.sentences)), ctx)
    Bundle.model_validate(bundle)
    for observation in _of_type(bundle, "Observation"):
        systems = [c["system"] for c in observation["code"]["coding"]]
        local = "https://radreport.example/fhir/CodeSystem/chexpert-label"
        assert local in systems
        assert ("http://snomed.info/sct" in systems) == (
            observation["code"]["text"] in SNOMED_FINDINGS)


def test_accepts_the_formatter_s_own_structured_findings(draft: Draft, ctx: FhirContext,
                                                         ) -> None:
    findings = structured_findings(draft, ReviewPolicy())
    bundle = build_bundle(draft, findings, _overlays(len(draft.sentences)), ctx)
    assert len(_of_type(bundle, "Observation")) == len(findings) > 0
    Bundle.model_validate(bundle)


# -- Provenance and Device ---------------------------------------------------------------

def test_provenance_names_the_device_as_author(bundle: dict[str, Any]) -> None:
    resources = _by_url(bundle)
    (provenance,) = _of_type(bundle, "Provenance")
    targets = [t["reference"] for t in provenance["target"]]
    report_url = f"urn:uuid:{_report(bundle)['id']}"
    assert targets[0] == report_url
    assert {f"urn:uuid:{o['id']}" for o in _of_type(bundle, "Observation")} <= set(targets)
    assert provenance["recorded"] == "2025-03-04T12:30:15Z"
    assert provenance["activity"]["coding"][0]["code"] == "CREATE"
    (agent,) = provenance["agent"]
    assert agent["type"]["coding"][0]["code"] == "author"
    device = resources[agent["who"]["reference"]]
    assert device["resourceType"] == "Device"
    assert MODEL in [v["value"] for v in device["version"]]
    assert "radreport 0.1.0" in [v["value"] for v in device["version"]]
    assert device["type"]["text"] == "software"


# -- status and input checks -------------------------------------------------------------

def test_status_is_passed_on(draft: Draft, findings: list[StructuredFinding],
                             ctx: FhirContext) -> None:
    bundle = build_bundle(draft, findings, _overlays(len(draft.sentences)),
                          replace(ctx, status="final"))
    assert _report(bundle)["status"] == "final"
    assert {o["status"] for o in _of_type(bundle, "Observation")} == {"final"}


@pytest.mark.parametrize("status", ["draft", "Final", "cancelled", ""])
def test_invalid_status_raises(ctx: FhirContext, status: str) -> None:
    with pytest.raises(ValueError, match="status"):
        replace(ctx, status=status)  # type: ignore[arg-type]


@pytest.mark.parametrize("change", [
    {"issued": datetime(2025, 3, 4, 12, 30)},  # naive
    {"effective": datetime(2025, 3, 4, 12, 0)},
    {"subject_reference": "John Doe"},
    {"subject_reference": "Practitioner/7"},
    {"encounter_reference": "Patient/123"},
    {"study_instance_uid": "1.2.03.abc"},
    {"report_id": ""},
])
def test_invalid_context_raises(ctx: FhirContext, change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(ctx, **change)


def test_other_timezones_are_accepted(ctx: FhirContext, draft: Draft) -> None:
    ctx = replace(ctx, issued=datetime(2025, 3, 4, 13, 30, 15,
                                       tzinfo=timezone(timedelta(hours=1))))
    bundle = build_bundle(draft, [], _overlays(len(draft.sentences)), ctx)
    assert _report(bundle)["issued"] == "2025-03-04T13:30:15+01:00"


def test_overlay_count_must_match_sentences(draft: Draft, findings: list[StructuredFinding],
                                            ctx: FhirContext) -> None:
    with pytest.raises(ValueError, match="2 overlays for 3 sentences"):
        build_bundle(draft, findings, _overlays(2), ctx)


def test_duplicate_finding_raises(draft: Draft, findings: list[StructuredFinding],
                                  ctx: FhirContext) -> None:
    with pytest.raises(ValueError, match="twice"):
        build_bundle(draft, [*findings, findings[0]], _overlays(len(draft.sentences)), ctx)


@pytest.mark.parametrize(("signed", "amended", "expected"), [
    (False, False, "preliminary"), (True, False, "final"), (True, True, "amended")])
def test_diagnostic_report_status(signed: bool, amended: bool, expected: str) -> None:
    assert diagnostic_report_status(signed, amended) == expected


def test_amended_without_signature_raises() -> None:
    with pytest.raises(ValueError):
        diagnostic_report_status(signed=False, amended=True)
