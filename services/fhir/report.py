"""A draft report as a FHIR R4B (4.3.0) Bundle: pure functions, no Celery, no settings.

FHIR version: **R4B, 4.3.0**, built with ``fhir.resources.R4B`` (in fhir.resources 7+ the
top-level modules are R5). R4B is the R4-compatible release: the resources used here
(DiagnosticReport, Observation, Media, Device, Provenance, Bundle) are unchanged from R4
4.0.1, so an R4 server accepts the bundle.

``build_bundle`` returns a Bundle of type ``collection`` holding, in this order:

- one ``DiagnosticReport``: the draft text (``presentedForm``), the impression
  (``conclusion``), ``result`` -> the Observations, ``media`` -> the Media, and
  ``imagingStudy`` -> a logical reference (by identifier) to the source study;
- one ``Observation`` per structured finding: present or absent, with components for the
  label head's raw probability (``confidence``) and, when served, its calibrated one
  (``calibrated-probability``), both our codes;
- the study-level safety net (model v2), as Observations with our codes that
  ``DiagnosticReport.result`` also references, after the findings (Observations rather
  than DiagnosticReport extensions, so any FHIR client shows them):
  ``calibrated-confidence`` (the calibrated probability that every present/absent
  decision is right, %) and ``ood-score`` (the image's distance from the training data,
  with the threshold as ``referenceRange.high`` and an ``interpretation`` of H, "outside
  the model's training distribution", or N); each only when the draft has it. An
  out-of-distribution study also gets a warning in the report's narrative;
- one ``Media`` per sentence: its grounding overlay PNG, by URL. In R4/R4B
  ``DiagnosticReport.media.link`` must reference a Media resource, so the overlay gets
  one (``content.url`` the overlay, ``contentType`` image/png); the sentence itself is
  ``DiagnosticReport.media.comment``;
- one ``Device``: the drafting software and its model version;
- one ``Provenance``: the Device is the ``author`` of everything above (activity CREATE).

Every ``fullUrl`` is ``urn:uuid:<uuid5(report_id/name)>`` (the resource ``id`` is the same
uuid) and references between entries use those urns, so the same input gives the same JSON.

AI labelling: the report, observations and overlays carry the HL7 security label AIAST
("artificial intelligence asserted", code system v3-ObservationValue) in
``meta.security``, as the HL7 AI Transparency IG does; it is a security (integrity) label,
not a plain ``meta.tag``. The presentedForm title also says "AI-generated draft".

No PHI: nothing from the image header or the request other than the FHIR references the
caller puts into :class:`FhirContext` (``Patient/...``, ``Encounter/...``) and the Study
Instance UID is written; no names, no MRNs.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, get_args

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.domainresource import DomainResource
from fhir.resources.R4B.media import Media
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.provenance import Provenance

from services.common.schemas import Draft, StructuredFinding

FHIR_VERSION: Final = "4.3.0"  # R4B

FhirReportStatus = Literal["preliminary", "final", "amended"]
REPORT_STATUSES: Final[tuple[str, ...]] = get_args(FhirReportStatus)

# Code systems
SNOMED: Final = "http://snomed.info/sct"
LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
V3_OBSERVATION_VALUE: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_DATA_OPERATION: Final = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_PARTICIPANT: Final = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
MEDIA_TYPE: Final = "http://terminology.hl7.org/CodeSystem/media-type"
DICOM_UID: Final = "urn:dicom:uid"  # ImagingStudy.identifier system for the Study Instance UID
# Ours, for what no standard terminology names exactly (CheXpert's labels, the confidence)
LOCAL_CODES: Final = "https://radreport.example/fhir/CodeSystem"
CHEXPERT_LABEL_SYSTEM: Final = f"{LOCAL_CODES}/chexpert-label"
RADREPORT_OBSERVATION_SYSTEM: Final = f"{LOCAL_CODES}/observation"

# Namespace of our uuid5 ids (fixed forever: changing it changes every id)
RADREPORT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://radreport.example/fhir")

# LOINC 36554-4 "XR Chest Single view": the model reads one frontal radiograph (PA or AP)
# per study, so "2 Views" (36643-5) would claim a lateral we never saw, "Portable"
# (30746-2) a technique we do not know, and 18748-4 "Diagnostic imaging study" says less
# than we know (chest, radiography).
REPORT_CODE: Final = {"system": LOINC, "code": "36554-4", "display": "XR Chest Single view"}
RAD_CATEGORY: Final = {"system": V2_0074, "code": "RAD", "display": "Radiology"}
IMAGING_CATEGORY: Final = {"system": OBSERVATION_CATEGORY, "code": "imaging",
                           "display": "Imaging"}
AI_ASSERTED: Final = {"system": V3_OBSERVATION_VALUE, "code": "AIAST",
                      "display": "artificial intelligence asserted"}
CHEST: Final = {"system": SNOMED, "code": "51185008", "display": "Thoracic structure"}
PRESENT: Final = {"system": SNOMED, "code": "52101004", "display": "Present"}
ABSENT: Final = {"system": SNOMED, "code": "2667000", "display": "Absent"}
SEVERITY: Final = {"system": SNOMED, "code": "246112005", "display": "Severity"}
SEVERITY_VALUES: Final = {
    "mild": {"system": SNOMED, "code": "255604002", "display": "Mild"},
    "moderate": {"system": SNOMED, "code": "6736007", "display": "Moderate"},
    "severe": {"system": SNOMED, "code": "24484000", "display": "Severe"},
}
# The label head's probability has no standard code: a component in our own code system,
# as a UCUM percentage (Observation.component rather than an extension, so any FHIR
# client shows it without knowing our profile).
CONFIDENCE: Final = {"system": RADREPORT_OBSERVATION_SYSTEM, "code": "confidence",
                     "display": "Model probability that the finding is present"}
CALIBRATED_PROBABILITY: Final = {
    "system": RADREPORT_OBSERVATION_SYSTEM, "code": "calibrated-probability",
    "display": "Calibrated model probability that the finding is present"}
# Study-level read-outs of the model's safety net (radreport.model.safety). Displays fit
# DICOM's 64-character Code Meaning: the SR uses the same codes.
CALIBRATED_CONFIDENCE: Final = {
    "system": RADREPORT_OBSERVATION_SYSTEM, "code": "calibrated-confidence",
    "display": "Calibrated probability that all finding decisions are right"}
OOD_SCORE: Final = {
    "system": RADREPORT_OBSERVATION_SYSTEM, "code": "ood-score",
    "display": "Distance of the image from the model's training distribution"}
V3_INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OUT_OF_DISTRIBUTION_TEXT: Final = "outside the model's training distribution"
OOD_HIGH: Final = {"system": V3_INTERPRETATION, "code": "H", "display": "High"}
OOD_NORMAL: Final = {"system": V3_INTERPRETATION, "code": "N", "display": "Normal"}
OOD_WARNING: Final = ("The image lies outside the model's training distribution: no output "
                      "of the model, this draft included, can be trusted without a full "
                      "reading by a radiologist.")
# SNOMED CT disorders for the CheXpert labels that have an exact one. The other six
# ("No Finding", "Enlarged Cardiomediastinum", "Lung Opacity", "Lung Lesion",
# "Pleural Other", "Support Devices") are umbrella terms of CheXpert's labeler with no
# single equivalent concept: they carry only the local chexpert-label code.
SNOMED_FINDINGS: Final[dict[str, tuple[str, str]]] = {
    "Cardiomegaly": ("8186001", "Cardiomegaly"),
    "Edema": ("19242006", "Pulmonary edema"),
    "Consolidation": ("95436008", "Lung consolidation"),
    "Pneumonia": ("233604007", "Pneumonia"),
    "Atelectasis": ("46621007", "Atelectasis"),
    "Pneumothorax": ("36118008", "Pneumothorax"),
    "Pleural Effusion": ("60046008", "Pleural effusion"),
    "Fracture": ("125605004", "Fracture of bone"),
}

# Reference targets FHIR R4B allows for DiagnosticReport/Observation.subject
SUBJECT_TYPES: Final = frozenset({"Patient", "Group", "Device", "Location"})
_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")  # DICOM PS3.5 §9.1


@dataclass(frozen=True)
class FhirContext:
    """What the bundle says besides the draft: ids, references, times, the software."""

    report_id: str
    study_id: str
    study_instance_uid: str | None
    subject_reference: str | None  # e.g. "Patient/123"; omitted from the bundle when None
    encounter_reference: str | None  # e.g. "Encounter/456"
    issued: datetime  # timezone-aware
    effective: datetime | None  # the clinically relevant time (acquisition), if known
    base_url: str  # e.g. "http://127.0.0.1:8080/api/v1"
    software_name: str
    software_version: str
    status: FhirReportStatus = "preliminary"

    def __post_init__(self) -> None:
        if self.status not in REPORT_STATUSES:
            raise ValueError(f"status must be one of {REPORT_STATUSES}, not {self.status!r}")
        if not self.report_id:
            raise ValueError("report_id is empty")
        for name in ("issued", "effective"):
            when = getattr(self, name)
            if when is not None and when.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware, not {when.isoformat()}")
        if self.subject_reference is not None:
            kind = _reference_type(self.subject_reference, "subject_reference")
            if kind not in SUBJECT_TYPES:
                raise ValueError(f"subject_reference must be one of {sorted(SUBJECT_TYPES)}, "
                                 f"not {kind}")
        if (self.encounter_reference is not None
                and _reference_type(self.encounter_reference, "encounter_reference")
                != "Encounter"):
            raise ValueError(f"encounter_reference must be Encounter/<id>, "
                             f"not {self.encounter_reference!r}")
        if self.study_instance_uid is not None and not (
                len(self.study_instance_uid) <= 64 and _UID.match(self.study_instance_uid)):
            raise ValueError(f"not a DICOM UID: {self.study_instance_uid!r}")


def diagnostic_report_status(signed: bool, amended: bool) -> FhirReportStatus:
    """DiagnosticReport.status of a draft: preliminary until a radiologist signs it."""
    if amended and not signed:
        raise ValueError("an amended report is a signed report changed after signing")
    if amended:
        return "amended"
    return "final" if signed else "preliminary"


def report_text(draft: Draft) -> str:
    """The report as one text: what ``presentedForm`` carries."""
    return f"FINDINGS: {draft.findings}\n\nIMPRESSION: {draft.impression}"


def resource_uuid(report_id: str, name: str) -> str:
    """The deterministic id of one resource of a report's bundle."""
    return str(uuid.uuid5(RADREPORT_NAMESPACE, f"{report_id}/{name}"))


def build_bundle(draft: Draft, findings: list[StructuredFinding], overlays: list[str],
                 ctx: FhirContext) -> dict[str, Any]:
    """The FHIR R4B Bundle (type collection) of a draft, as JSON-ready data.

    ``overlays`` are the URLs of the per-sentence overlay PNGs, index-aligned with
    ``draft.sentences``. Raises ValueError on mismatched inputs.
    """
    if len(overlays) != len(draft.sentences):
        raise ValueError(f"{len(overlays)} overlays for {len(draft.sentences)} sentences")
    labels = [f.finding for f in findings]
    if len(set(labels)) != len(labels):
        raise ValueError(f"a finding is listed twice: {labels}")

    device = _device(draft, ctx)
    media = [_media(index, url, ctx) for index, url in enumerate(overlays)]
    observations = [_observation(finding, len(overlays), ctx) for finding in findings]
    study_level = _study_observations(draft, ctx)
    report = _diagnostic_report(draft, findings, study_level, ctx)
    authored: list[DomainResource] = [report, *observations, *study_level, *media]
    provenance = _provenance(authored, draft, ctx)
    bundle_id = resource_uuid(ctx.report_id, "Bundle")
    fields: dict[str, Any] = {
        "id": bundle_id,
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{bundle_id}"},
        "type": "collection",
        "timestamp": ctx.issued,
        "entry": [{"fullUrl": f"urn:uuid:{r.id}", "resource": r}
                  for r in [*authored, device, provenance]],
    }
    data: dict[str, Any] = json.loads(Bundle(**fields).model_dump_json())
    return data


# -- resources ------------------------------------------------------------------------

def _diagnostic_report(draft: Draft, findings: list[StructuredFinding],
                       study_level: list[Observation], ctx: FhirContext) -> DiagnosticReport:
    text = report_text(draft)
    body = text.encode("utf-8")
    paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in text.split("\n") if line)
    if draft.out_of_distribution:
        paragraphs = f"<p><b>{html.escape(OOD_WARNING)}</b></p>{paragraphs}"
    results = [_ref("Observation", f"Observation/{f.finding}", ctx, display=f.finding)
               for f in findings]
    results += [{"reference": f"urn:uuid:{o.id}", "type": "Observation",
                 "display": o.code.text} for o in study_level]
    fields: dict[str, Any] = {
        "id": resource_uuid(ctx.report_id, "DiagnosticReport"),
        "meta": {"security": [AI_ASSERTED]},
        "text": {"status": "generated",
                 "div": '<div xmlns="http://www.w3.org/1999/xhtml">'
                        "<p><b>AI-generated draft, not verified by a radiologist.</b></p>"
                        f"{paragraphs}</div>"},
        "identifier": [{"system": f"{ctx.base_url}/reports", "value": ctx.report_id}],
        "status": ctx.status,
        "category": [{"coding": [RAD_CATEGORY]}],
        "code": {"coding": [REPORT_CODE], "text": "Chest radiograph report"},
        **_subject_and_encounter(ctx),
        "effectiveDateTime": ctx.effective,
        "issued": ctx.issued,
        "result": results or None,
        "imagingStudy": [_imaging_study(ctx)],
        "media": [{"comment": sentence.text, "link": _ref("Media", f"Media/{index}", ctx)}
                  for index, sentence in enumerate(draft.sentences)] or None,
        "conclusion": draft.impression or None,  # FHIR strings may not be empty
        "presentedForm": [{
            "contentType": "text/plain; charset=utf-8",
            "language": "en",
            "data": base64.b64encode(body).decode("ascii"),
            "size": len(body),
            "hash": base64.b64encode(hashlib.sha1(body).digest()).decode("ascii"),
            "title": f"AI-generated draft chest radiograph report ({draft.model_version})",
            "creation": ctx.issued,
        }],
    }
    return DiagnosticReport(**fields)


def _observation(finding: StructuredFinding, n_sentences: int,
                 ctx: FhirContext) -> Observation:
    coding = [{"system": CHEXPERT_LABEL_SYSTEM, "code": _slug(finding.finding),
               "display": finding.finding}]
    if finding.finding in SNOMED_FINDINGS:
        code, display = SNOMED_FINDINGS[finding.finding]
        coding.insert(0, {"system": SNOMED, "code": code, "display": display})
    components: list[dict[str, Any]] = [{
        "code": {"coding": [CONFIDENCE], "text": "confidence"},
        "valueQuantity": _percent(finding.confidence),
    }]
    if finding.calibrated_probability is not None:
        components.append({
            "code": {"coding": [CALIBRATED_PROBABILITY], "text": "calibrated probability"},
            "valueQuantity": _percent(finding.calibrated_probability)})
    if finding.severity is not None:
        components.append({"code": {"coding": [SEVERITY]},
                           "valueCodeableConcept": {"coding": [SEVERITY_VALUES[finding.severity]],
                                                    "text": finding.severity}})
    # The overlays of the sentences that state the finding, then the study itself
    derived = [_ref("Media", f"Media/{i}", ctx)
               for i in finding.sentence_indices if 0 <= i < n_sentences]
    notes = []
    if not finding.mentioned_in_text:
        calibrated = ("" if finding.calibrated_probability is None
                      else f" ({100 * finding.calibrated_probability:.0f}% calibrated)")
        notes.append({"text": "Not stated in the report text; the label head gives "
                              f"{100 * finding.confidence:.0f}% probability of presence"
                              f"{calibrated}."})
    fields: dict[str, Any] = {
        "id": resource_uuid(ctx.report_id, f"Observation/{finding.finding}"),
        "meta": {"security": [AI_ASSERTED]},
        "status": ctx.status,
        "category": [{"coding": [IMAGING_CATEGORY]}],
        "code": {"coding": coding, "text": finding.finding},
        **_subject_and_encounter(ctx),
        "effectiveDateTime": ctx.effective,
        "issued": ctx.issued,
        "valueCodeableConcept": {"coding": [PRESENT if finding.present else ABSENT],
                                 "text": "present" if finding.present else "absent"},
        "bodySite": {"coding": [CHEST]},
        "device": _ref("Device", "Device", ctx),
        "derivedFrom": [*derived, _imaging_study(ctx)],
        "component": components,
        "note": notes or None,
    }
    return Observation(**fields)


def _study_observations(draft: Draft, ctx: FhirContext) -> list[Observation]:
    """The safety net's study-level Observations; none for a draft without them."""
    observations = []
    if draft.calibrated_confidence is not None:
        observations.append(_study_observation(
            "calibrated-confidence", CALIBRATED_CONFIDENCE, "calibrated confidence",
            {"valueQuantity": _percent(draft.calibrated_confidence)}, ctx))
    if draft.ood_score is not None:
        observations.append(_study_observation(
            "ood-score", OOD_SCORE, "out-of-distribution score", _ood_fields(draft), ctx))
    return observations


def _ood_fields(draft: Draft) -> dict[str, Any]:
    """The OOD score's value, and against its threshold its range and interpretation."""
    assert draft.ood_score is not None
    fields: dict[str, Any] = {"valueQuantity": _unitless(draft.ood_score)}
    if draft.ood_threshold is not None:
        fields["referenceRange"] = [{"high": _unitless(draft.ood_threshold),
                                     "text": "within the model's training distribution"}]
        fields["interpretation"] = [{
            "coding": [OOD_HIGH if draft.out_of_distribution else OOD_NORMAL],
            "text": (OUT_OF_DISTRIBUTION_TEXT if draft.out_of_distribution
                     else "within the model's training distribution")}]
    if draft.out_of_distribution:
        fields["note"] = [{"text": OOD_WARNING}]
    return fields


def _study_observation(name: str, coding: dict[str, str], text: str, value: dict[str, Any],
                       ctx: FhirContext) -> Observation:
    fields: dict[str, Any] = {
        "id": resource_uuid(ctx.report_id, f"Observation/study/{name}"),
        "meta": {"security": [AI_ASSERTED]},
        "status": ctx.status,
        "category": [{"coding": [IMAGING_CATEGORY]}],
        "code": {"coding": [coding], "text": text},
        **_subject_and_encounter(ctx),
        "effectiveDateTime": ctx.effective,
        "issued": ctx.issued,
        "device": _ref("Device", "Device", ctx),
        "derivedFrom": [_imaging_study(ctx)],
        **value,
    }
    return Observation(**fields)


def _media(index: int, url: str, ctx: FhirContext) -> Media:
    fields: dict[str, Any] = {
        "id": resource_uuid(ctx.report_id, f"Media/{index}"),
        "meta": {"security": [AI_ASSERTED]},
        "status": "completed",
        "type": {"coding": [{"system": MEDIA_TYPE, "code": "image", "display": "Image"}]},
        **_subject_and_encounter(ctx),
        "issued": ctx.issued,
        "bodySite": {"coding": [CHEST]},
        "device": _ref("Device", "Device", ctx),
        "content": {"contentType": "image/png", "url": url,
                    "title": f"Grounding overlay of sentence {index}"},
    }
    return Media(**fields)


def _device(draft: Draft, ctx: FhirContext) -> Device:
    fields: dict[str, Any] = {
        "id": resource_uuid(ctx.report_id, "Device"),
        "status": "active",
        "deviceName": [{"name": ctx.software_name, "type": "user-friendly-name"},
                       {"name": draft.model_version, "type": "model-name"}],
        "type": {"text": "software"},
        "version": [{"type": {"text": "model"}, "value": draft.model_version},
                    {"type": {"text": "software"},
                     "value": f"{ctx.software_name} {ctx.software_version}"}],
    }
    return Device(**fields)


def _provenance(authored: list[DomainResource], draft: Draft, ctx: FhirContext,
                ) -> Provenance:
    """The software (the Device) is the author of ``authored``."""
    fields: dict[str, Any] = {
        "id": resource_uuid(ctx.report_id, "Provenance"),
        "target": [{"reference": f"urn:uuid:{r.id}", "type": r.get_resource_type()}
                   for r in authored],
        "recorded": ctx.issued,
        "activity": {"coding": [{"system": V3_DATA_OPERATION, "code": "CREATE",
                                 "display": "create"}]},
        "agent": [{
            "type": {"coding": [{"system": PROVENANCE_PARTICIPANT, "code": "author",
                                 "display": "Author"}]},
            "who": _ref("Device", "Device", ctx, display=f"{ctx.software_name} "
                        f"{ctx.software_version} ({draft.model_version})"),
        }],
        "entity": [{"role": "source", "what": _imaging_study(ctx)}],
    }
    return Provenance(**fields)


# -- helpers --------------------------------------------------------------------------

def _ref(kind: str, name: str, ctx: FhirContext, display: str | None = None,
         ) -> dict[str, Any]:
    ref: dict[str, Any] = {"reference": f"urn:uuid:{resource_uuid(ctx.report_id, name)}",
                           "type": kind}
    if display is not None:
        ref["display"] = display
    return ref


def _percent(probability: float) -> dict[str, Any]:
    return {"value": round(100 * probability, 2), "unit": "%", "system": UCUM, "code": "%"}


def _unitless(value: float) -> dict[str, Any]:
    return {"value": round(value, 4), "unit": "1", "system": UCUM, "code": "1"}


def _imaging_study(ctx: FhirContext) -> dict[str, Any]:
    """A logical reference (by identifier) to the source study.

    By Study Instance UID when known (FHIR's ImagingStudy convention: system
    urn:dicom:uid, value urn:oid:<uid>); else by our study id, the key of the gateway's
    ``/studies/{study_id}`` resource.
    """
    if ctx.study_instance_uid is not None:
        identifier = {"system": DICOM_UID, "value": f"urn:oid:{ctx.study_instance_uid}"}
    else:
        identifier = {"system": f"{ctx.base_url}/studies", "value": ctx.study_id}
    return {"type": "ImagingStudy", "identifier": identifier}


def _subject_and_encounter(ctx: FhirContext) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if ctx.subject_reference is not None:
        fields["subject"] = {"reference": ctx.subject_reference}
    if ctx.encounter_reference is not None:
        fields["encounter"] = {"reference": ctx.encounter_reference}
    return fields


def _reference_type(reference: str, name: str) -> str:
    match = _REFERENCE.match(reference)
    if match is None:
        raise ValueError(f"{name} must be a relative FHIR reference Type/id, not {reference!r}")
    return match.group(1)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
