"""Our phantom generator's export folders (``radreport phantoms --out``).

Layout read (see :mod:`radreport.data.phantoms.export`)::

    manifest.jsonl          one JSON object per study
    images/<study_id>.png   16-bit grayscale

Only the keys a :class:`ReportRecord` needs are read; the rest (masks, boxes, sentences)
stays for the grounding code. A study exported without a split gets one from
:func:`patient_split`, so phantoms mix with real data under the same rule.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from radreport.data.datasets.base import (
    ReportDataset,
    ReportRecord,
    clean_report_text,
    is_frontal,
    normalize_split,
    normalize_view,
    parse_labels,
    patient_split,
)

MANIFEST = "manifest.jsonl"


class Phantoms(ReportDataset):
    """Synthetic frontal studies with exact labels, one record per study."""

    name: ClassVar[str] = "phantoms"

    def __init__(self, root: Path, fractions: Sequence[float] = (0.9, 0.05, 0.05),
                 salt: str = "radreport") -> None:
        super().__init__(root)
        self.fractions = tuple(fractions)
        self.salt = salt

    @classmethod
    def looks_like(cls, root: Path) -> bool:
        return (root / MANIFEST).is_file()

    def _entries(self) -> Iterator[dict[str, Any]]:
        with open(self.root / MANIFEST, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    def _record(self, entry: dict[str, Any]) -> ReportRecord:
        patient = entry.get("patient") or {}
        patient_id = str(patient["patient_id"])
        split = entry.get("split")
        image = entry.get("image") or f"images/{entry['study_id']}.png"
        return ReportRecord(
            dataset=self.name,
            study_id=str(entry["study_id"]),
            patient_id=patient_id,
            image_path=self.root / image,
            view=normalize_view(entry.get("view")),
            findings=clean_report_text(entry.get("findings_text") or ""),
            impression=clean_report_text(entry.get("impression_text") or ""),
            labels=parse_labels(entry.get("labels") or {}),
            split=normalize_split(split) if split else patient_split(
                patient_id, self.fractions, self.salt),
            sex=patient.get("sex"),
            age=patient.get("age_years"),
        )

    def _all_records(self, frontal_only: bool) -> Iterator[ReportRecord]:
        for entry in self._entries():
            rec = self._record(entry)
            if is_frontal(rec.view) or not frontal_only:
                yield rec
