"""The FHIR bundle of a stored report: made by the format stage (preliminary) and again
when a radiologist signs (final) or changes a signed report (amended)."""

from __future__ import annotations

from datetime import datetime
from importlib.metadata import version
from typing import Any

from services.common.blobs import BlobStore
from services.common.schemas import Draft, StructuredFinding
from services.common.store import Report
from services.fhir.report import FhirContext, FhirReportStatus, build_bundle


def report_bundle(report: Report, draft: Draft, findings: list[StructuredFinding],
                  public_base_url: str, issued: datetime,
                  status: FhirReportStatus = "preliminary",
                  text: dict[str, str] | None = None) -> dict[str, Any]:
    """``text`` (findings, impression) replaces the draft's: the radiologist's words."""
    if text:
        draft = draft.model_copy(update={"findings": text.get("findings", draft.findings),
                                          "impression": text.get("impression",
                                                                 draft.impression)})
    api = f"{public_base_url}/api/v1"
    overlays = [f"{api}/reports/{report.id}/sentences/{i}/overlay.png"
                for i in range(len(draft.sentences))]
    return build_bundle(draft, findings, overlays, FhirContext(
        report_id=report.id, study_id=report.study_id,
        study_instance_uid=report.source.get("study_instance_uid"),
        subject_reference=report.request.get("subject_reference"),
        encounter_reference=report.request.get("encounter_reference"),
        issued=issued, effective=None, base_url=api, software_name="radreport",
        software_version=version("radreport"), status=status))


def rewrite_bundle(report: Report, blobs: BlobStore, public_base_url: str, issued: datetime,
                   status: FhirReportStatus, text: dict[str, str]) -> None:
    draft = Draft.model_validate(blobs.get_json(report.id, "draft.json"))
    findings = [StructuredFinding(**f) for f in (report.result or {}).get(
        "findings_structured", [])]
    blobs.put_json(report.id, "fhir.json", report_bundle(
        report, draft, findings, public_base_url, issued, status, text))
