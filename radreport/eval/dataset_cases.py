"""Evaluation cases from a real dataset (MIMIC-CXR-JPG, IU X-ray, CheXpert) for the gate.

Images are decoded as serving decodes them (``services.preprocess.imaging.load_image``);
one the service would refuse is skipped and counted, never fatal. Reference labels are the
dataset's own CheXpert labels (uncertain counts as positive, as in every clinical row),
except IU X-ray, which has none: there they come from our labeler on the reference report,
as issue 18 decided. No dataset here has region masks or organ masks, so grounding,
anatomical grounding and laterality rows come out undefined ("not measurable").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from radreport.data.datasets.base import ReportRecord, open_dataset
from radreport.data.labels import CHEXPERT_LABELS
from radreport.eval.evaluate import TestCase
from radreport.eval.labeler import report_vector
from radreport.model.prompt import ClinicalContext

LABELER_DATASETS = frozenset({"iu-xray"})


@dataclass(frozen=True)
class DatasetCases:
    cases: list[TestCase]
    skipped: int  # images that could not be read or that serving would refuse
    note: str


def reference_text(record: ReportRecord) -> str:
    """The report in the phantoms' shape, so NLG rows compare like with like."""
    parts = [f"FINDINGS: {record.findings}" if record.findings else "",
             f"IMPRESSION: {record.impression}" if record.impression else ""]
    return "\n\n".join(p for p in parts if p)


def reference_labels(kind: str, record: ReportRecord, text: str) -> list[int]:
    values = report_vector(text) if kind in LABELER_DATASETS else record.labels
    return [int(values.get(name) in (1, -1)) for name in CHEXPERT_LABELS]


def _records(kind: str, root: Path, split: str) -> Iterator[ReportRecord]:
    return open_dataset(kind, root).records(split, frontal_only=True)


def dataset_cases(kind: str, root: Path, split: str = "test",
                  limit: int | None = None) -> DatasetCases:
    """The first ``limit`` readable frontal studies of ``split``."""
    from services.preprocess.imaging import InputRefused, load_image

    cases: list[TestCase] = []
    skipped = 0
    for record in _records(kind, root, split):
        if limit is not None and len(cases) >= limit:
            break
        if record.image_path is None:
            skipped += 1
            continue
        try:
            pixels = load_image(record.image_path).pixels
        except (OSError, InputRefused):
            skipped += 1
            continue
        text = reference_text(record)
        cases.append(TestCase(record.study_id, pixels, text,
                              reference_labels(kind, record, text),
                              context=ClinicalContext(None, record.age, record.sex)))
    source = ("labels from our labeler on the reference reports" if kind in LABELER_DATASETS
              else "the dataset's CheXpert labels")
    note = (f"{kind}: {len(cases)} studies, {skipped} skipped as unreadable; {source}; no "
            "region masks, so grounding and laterality rows are not measurable")
    return DatasetCases(cases, skipped, note)
