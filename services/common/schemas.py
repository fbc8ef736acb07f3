"""Pydantic schemas of a report: what the API takes and answers, and what stages hand on.

Layered as in FastAPI's template: ``*Request`` is what a client sends, ``*Public`` what it
gets back; ``Draft*`` is what inference hands the formatting stages (stored as JSON in the
blob store, never sent through the broker).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, model_validator

from radreport.model.grounding import Letterbox

# A study id is an identifier, not free text: it becomes part of blob paths and queries.
StudyId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$",
                               examples=["STUDY-12345", "1.2.840.113619.2.55.3.604688"])]


def _as_utc(value: datetime) -> datetime:
    """The store keeps UTC without a zone (SQLite drops it); RFC 3339 needs the offset."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# A timestamp that always carries its offset, as the OpenAPI date-time format requires.
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
# (x0, y0, x1, y1) in pixels of the original image, x0 < x1 and y0 < y1
BoundingBox = tuple[int, int, int, int]


class ErrorBody(BaseModel):
    """Every error answer: our own words (never header text or other PHI) and, where there
    is one, a stable code for programs; request validation lists its errors instead."""

    detail: str | list[dict[str, Any]]
    reason: str | None = Field(default=None, description="A stable code, e.g. too_large, "
                                                         "corrupt_dicom, not_chest")


class ReportStatus(StrEnum):
    queued = "queued"
    preprocessing = "preprocessing"
    inferring = "inferring"
    formatting = "formatting"
    completed = "completed"
    failed = "failed"  # permanent: bad input or dead-lettered after N attempts

    @property
    def finished(self) -> bool:
        return self in (ReportStatus.completed, ReportStatus.failed)


class PatientMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    age: int | None = Field(default=None, ge=0, le=130)
    sex: Literal["M", "F", "O", "U"] | None = None


class ReportRequestBase(BaseModel):
    """What a client says about a study, whatever way its image arrives."""

    model_config = ConfigDict(extra="forbid")

    study_id: StudyId
    clinical_indication: str | None = Field(default=None, max_length=1000)
    patient_metadata: PatientMetadata | None = None
    subject_reference: str | None = Field(
        default=None, max_length=256, pattern=r"^[A-Za-z]+/[A-Za-z0-9.-]+$",
        description="FHIR reference of the patient, e.g. Patient/123.")
    encounter_reference: str | None = Field(
        default=None, max_length=256, pattern=r"^Encounter/[A-Za-z0-9.-]+$")
    force: bool = Field(default=False, description="Generate again even if a report exists.")


class GenerateRequest(ReportRequestBase):
    """The JSON body of ``POST /api/v1/reports/generate`` (our design docs, section 4.2)."""

    image_path: str | None = Field(
        default=None, max_length=1024,
        description="Path of a DICOM, PNG or JPEG file below the gateway's image root.")
    image_url: HttpUrl | None = Field(
        default=None, description="http(s) URL of the image, fetched by the gateway.")

    @model_validator(mode="after")
    def _one_image_source(self) -> GenerateRequest:
        if (self.image_path is None) == (self.image_url is None):
            raise ValueError("give exactly one of image_path or image_url")
        return self


class StructuredFinding(BaseModel):
    """One label-head finding (design doc 001's API), joined with the text that names it."""

    finding: str
    present: bool
    confidence: float = Field(ge=0.0, le=1.0, description="Label-head probability of presence.")
    calibrated_probability: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="Probability of presence calibrated on the model's validate split; "
                    "absent for reports drafted before calibration was served.")
    severity: Literal["mild", "moderate", "severe"] | None = None
    bounding_box: BoundingBox | None = None
    is_critical: bool
    mentioned_in_text: bool
    sentence_indices: list[int] = Field(default_factory=list)


class SentencePublic(BaseModel):
    index: int
    section: Literal["findings", "impression"]
    text: str
    boxes: list[BoundingBox]
    labels: list[str] = Field(description="Findings this sentence asserts as present.")
    grounding_url: str
    overlay_url: str


class ReportPublic(BaseModel):
    report_id: str
    study_id: str
    status: ReportStatus
    status_reason: str | None = None
    findings: str | None = None
    impression: str | None = None
    sentences: list[SentencePublic] = Field(default_factory=list)
    findings_structured: list[StructuredFinding] = Field(default_factory=list)
    grounding_map_url: str
    fhir_url: str
    confidence: float | None = Field(
        default=None, description="Agreement between the label head and the text, 0 to 1")
    calibrated_confidence: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="Calibrated probability that every present/absent decision of the label "
                    "head is right; 0 when the image is outside the training distribution")
    ood_score: float | None = Field(
        default=None, description="Distance of the image's features from the training data "
                                  "(Mahalanobis); absent when the model has no OOD gate")
    ood_threshold: float | None = Field(
        default=None, description="Scores above this are outside the training distribution")
    out_of_distribution: bool | None = Field(
        default=None, description="Whether the image lies outside the model's training "
                                  "distribution; every output is then untrustworthy")
    uncertain_findings: list[str] = Field(
        default_factory=list, description="Critical findings whose calibrated probability "
                                          "lies in their uncertain band")
    requires_radiologist_review: bool | None = None
    review_reasons: list[str] = Field(default_factory=list)
    processing_time_ms: int | None = None
    stage_timings_ms: dict[str, float] = Field(
        default_factory=dict, description="Time spent in each pipeline stage")
    review_status: Literal["draft", "signed", "amended"] = "draft"
    signed_by: str | None = None
    signed_at: UtcDatetime | None = None
    edit_distance: float | None = Field(
        default=None, description="Normalised edit distance of the reviewed text from the AI "
                                  "draft (findings and impression shown are the reviewed text)")
    model_version: str
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ReportSummary(BaseModel):
    report_id: str
    study_id: str
    status: ReportStatus
    model_version: str
    created_at: UtcDatetime


class DraftSentence(BaseModel):
    """A decoded sentence with its grounding, in original-image pixels."""

    text: str
    section: Literal["findings", "impression"]
    boxes: list[BoundingBox]
    heatmap: list[list[float]]  # (grid, grid) over the model input; sums to 1
    labels: list[str] = Field(default_factory=list)


class LetterboxInfo(BaseModel):
    """Where the original image sits in the square model input (``radreport.model.grounding``)."""

    size: int
    scale: float
    pad_x: float
    pad_y: float
    original_shape: tuple[int, int]

    def to_letterbox(self) -> Letterbox:
        return Letterbox(self.size, self.scale, self.pad_x, self.pad_y, self.original_shape)


class ImageQuality(BaseModel):
    """Input checks made by preprocessing; ``poor`` reasons flag the report for review."""

    width: int
    height: int
    bits_stored: int | None = None
    dynamic_range: float = Field(description="Spread of the 1st-99th percentile, in [0, 1].")
    poor_reasons: list[str] = Field(default_factory=list)


class Draft(BaseModel):
    """What inference produced for one study: the input of FHIR and overlay rendering."""

    findings: str
    impression: str
    sentences: list[DraftSentence]
    label_probs: dict[str, float]
    token_ids: list[int]
    model_version: str
    letterbox: LetterboxInfo
    attention_entropy: float | None = None
    inference_ms: float
    # The safety net (model v2, radreport.model.safety); defaults keep older drafts valid.
    calibrated_probs: dict[str, float] | None = None
    findings_present: list[str] | None = None  # the head's calibrated decisions; None: unknown
    uncertain_findings: list[str] = Field(default_factory=list)
    calibrated_confidence: float | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None
    out_of_distribution: bool = False
