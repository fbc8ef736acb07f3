"""The clinical context the model may read, taken from the report's stored request.

Queue messages carry only report ids, so the inference stage reads what the client said
(``clinical_indication``, ``patient_metadata``) from the report row the gateway stored.
DICOM pushes store neither: their reports are drafted without context. None of it is
logged or used as a metric label.
"""

from __future__ import annotations

from typing import Any

from radreport.model.prompt import ClinicalContext


def clinical_context(request: dict[str, Any]) -> ClinicalContext | None:
    """The request's indication, age and sex; None when it says nothing of them."""
    patient = request.get("patient_metadata") or {}
    context = ClinicalContext(indication=request.get("clinical_indication") or None,
                              age_years=patient.get("age"), sex=patient.get("sex"))
    return None if context == ClinicalContext() else context
