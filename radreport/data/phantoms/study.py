"""What one synthetic study is: image, ground-truth findings with masks, and a grounded report.

Coordinates are image pixels: ``x`` is the column (0 at the image's left edge, which is the
patient's right on a frontal radiograph), ``y`` the row (0 at the top). Boxes are
``(x0, y0, x1, y1)`` with ``x1``/``y1`` exclusive, as in NumPy slicing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from radreport.data.labels import LabelVector

Box = tuple[int, int, int, int]
Side = Literal["left", "right", "bilateral"]
Section = Literal["findings", "impression"]
ViewPosition = Literal["PA", "AP"]


def mask_box(mask: np.ndarray) -> Box | None:
    """Tight box around a boolean mask, or None when the mask is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


@dataclass(frozen=True)
class PatientInfo:
    """Synthetic demographics and identifiers; the names say plainly they are not real."""

    patient_id: str  # e.g. "PHANTOM-000123"
    patient_name: str  # DICOM PN, e.g. "PHANTOM^CASE000123"
    age_years: int
    sex: Literal["M", "F"]


@dataclass
class Finding:
    """One rendered abnormality (or device) with its exact region.

    ``kind`` is the specific finding (``"nodule"``, ``"pleural_effusion"``, ``"ett"``...);
    ``labels`` are the CheXpert observations it makes positive, the primary one first.
    """

    kind: str
    labels: tuple[str, ...]
    side: Side | None
    location: str | None  # lobe or zone in words, e.g. "right upper lobe", "left lower zone"
    severity: str | None  # "small" / "moderate" / "large", "mild" / "severe", ...
    size_cm: float | None
    mask: np.ndarray  # bool, H x W
    box: Box
    attributes: dict[str, str | float | int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.labels[0]


@dataclass
class Sentence:
    """One report sentence and the image region it speaks of.

    ``finding_indices`` index into the study's findings; a sentence about no positive
    finding (a pertinent negative or a global statement) has none, and its ``region`` names
    the anatomy its mask covers (``"lungs"``, ``"chest"``, ``"heart"``, ...).
    ``mentions`` holds the CheXpert labels the sentence states, 1 positive, 0 negative.
    """

    text: str
    section: Section
    finding_indices: tuple[int, ...]
    region: str
    mask: np.ndarray  # bool, H x W, never empty
    mentions: dict[str, int]

    @property
    def box(self) -> Box:
        box = mask_box(self.mask)
        assert box is not None, "sentence masks are never empty"
        return box

    @property
    def is_positive(self) -> bool:
        return bool(self.finding_indices)


@dataclass
class PhantomStudy:
    """A complete synthetic frontal chest radiograph with its ground truth."""

    study_id: str  # "PHANTOM-S000123"
    seed: int
    image: np.ndarray  # float32 in [0, 1], H x W; 1 = most attenuating (bone bright)
    pixel_spacing_mm: float  # square pixels, detector plane
    view: ViewPosition
    patient: PatientInfo
    anatomy: dict[str, np.ndarray]  # bool masks: "lung_right", "lung_left", "lungs", "heart", ...
    findings: list[Finding]
    sentences: list[Sentence]
    labels: LabelVector
    clinical_indication: str

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    @property
    def findings_text(self) -> str:
        return " ".join(s.text for s in self.sentences if s.section == "findings")

    @property
    def impression_text(self) -> str:
        return " ".join(s.text for s in self.sentences if s.section == "impression")

    @property
    def report_text(self) -> str:
        return f"FINDINGS: {self.findings_text}\n\nIMPRESSION: {self.impression_text}"
