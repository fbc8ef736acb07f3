"""MIMIC-CXR-JPG (v2.0.0 / v2.1.0) with report texts from MIMIC-CXR.

Layout read (``.csv`` accepted in place of ``.csv.gz``)::

    mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split
    mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ..., ViewPosition, ...
    mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id, 14 label columns (optional)
    files/p10/p10000032/s50414267/<dicom_id>.jpg
    mimic-cxr-reports/files/p10/p10000032/s50414267.txt   (or ``reports_root``)

The JPG release carries no report text; the reports come from the MIMIC-CXR (DICOM)
release, so they are looked for in ``reports_root``, ``<root>/mimic-cxr-reports`` or next
to the images. A study without a report file keeps empty findings and impression.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from radreport.data.datasets.base import (
    ImageRef,
    ReportDataset,
    ReportRecord,
    extract_sections,
    normalize_split,
    normalize_view,
    parse_labels,
    read_csv,
    select_images,
)
from radreport.data.labels import LabelVector

StudyKey = tuple[str, str]  # (subject_id, study_id), digits only as in the CSVs


@dataclass
class _Study:
    subject_id: str
    study_id: str
    images: list[ImageRef]
    study_date: str


def find_table(root: Path, table: str) -> Path | None:
    """The newest ``mimic-cxr-2.x.y-<table>.csv[.gz]`` in ``root``, if any."""
    candidates = sorted(root.glob(f"mimic-cxr-2.*-{table}.csv.gz"))
    candidates += sorted(root.glob(f"mimic-cxr-2.*-{table}.csv"))
    return candidates[-1] if candidates else None


def group_folder(subject_id: str) -> str:
    """The ``pXX`` folder of a subject: 'p' and the first two digits of its id."""
    return f"p{subject_id[:2]}"


def _view(row: dict[str, str]) -> str | None:
    """ViewPosition, or the coded view meaning when ViewPosition was left blank."""
    return normalize_view(row.get("ViewPosition") or row.get("ViewCodeSequence_CodeMeaning"))


class MimicCxrJpg(ReportDataset):
    """MIMIC-CXR-JPG with the official split, CheXpert labels and sectioned reports.

    ``per_image=False`` (the default) yields one record per study with its preferred image
    (PA over AP); ``per_image=True`` yields one record per image.
    """

    name: ClassVar[str] = "mimic-cxr-jpg"

    def __init__(self, root: Path, reports_root: Path | None = None,
                 per_image: bool = False) -> None:
        super().__init__(root)
        self.per_image = per_image
        self.report_dirs = self._report_dirs(reports_root)

    @classmethod
    def looks_like(cls, root: Path) -> bool:
        return find_table(root, "split") is not None and find_table(root, "metadata") is not None

    def _report_dirs(self, reports_root: Path | None) -> list[Path]:
        """Folders that may hold ``pXX/pNNNNNNNN/sNNNNNNNN.txt``, most specific first."""
        bases = [Path(reports_root)] if reports_root is not None else [
            self.root / "mimic-cxr-reports", self.root]
        dirs = [d for base in bases for d in (base / "files", base) if d.is_dir()]
        if reports_root is not None and not dirs:
            raise FileNotFoundError(f"reports folder {reports_root} does not exist")
        return dirs

    def report_path(self, subject_id: str, study_id: str) -> Path | None:
        """The free-text report of a study, or None when it is not on disk."""
        rel = Path(group_folder(subject_id), f"p{subject_id}", f"s{study_id}.txt")
        return next((d / rel for d in self.report_dirs if (d / rel).is_file()), None)

    def image_path(self, subject_id: str, study_id: str, dicom_id: str) -> Path:
        return (self.root / "files" / group_folder(subject_id) / f"p{subject_id}"
                / f"s{study_id}" / f"{dicom_id}.jpg")

    def _splits(self) -> dict[str, str]:
        path = find_table(self.root, "split")
        assert path is not None  # checked by looks_like
        return {row["dicom_id"]: normalize_split(row["split"]) for row in read_csv(path)}

    def _labels(self) -> dict[StudyKey, LabelVector]:
        path = find_table(self.root, "chexpert")
        if path is None:
            return {}
        return {(row["subject_id"], row["study_id"]): parse_labels(row) for row in read_csv(path)}

    def _studies(self) -> Iterator[_Study]:
        """Images grouped by study, in the metadata file's order."""
        path = find_table(self.root, "metadata")
        assert path is not None  # checked by looks_like
        studies: dict[StudyKey, _Study] = {}
        for row in read_csv(path):
            subject, study = row["subject_id"], row["study_id"]
            entry = studies.setdefault(
                (subject, study), _Study(subject, study, [], row.get("StudyDate", "")))
            entry.images.append(ImageRef(self.image_path(subject, study, row["dicom_id"]),
                                         _view(row), row["dicom_id"]))
        yield from studies.values()

    def _texts(self, study: _Study) -> tuple[str, str]:
        path = self.report_path(study.subject_id, study.study_id)
        if path is None:
            return "", ""
        return extract_sections(path.read_text(encoding="utf-8"))

    def _all_records(self, frontal_only: bool) -> Iterator[ReportRecord]:
        splits = self._splits()
        labels = self._labels()
        for study in self._studies():
            images = select_images(study.images, frontal_only=frontal_only,
                                   per_image=self.per_image)
            if not images:
                continue
            findings, impression = self._texts(study)
            for image in images:
                yield ReportRecord(
                    dataset=self.name,
                    study_id=f"s{study.study_id}",
                    patient_id=f"p{study.subject_id}",
                    image_path=image.path,
                    view=image.view,
                    findings=findings,
                    impression=impression,
                    labels=dict(labels.get((study.subject_id, study.study_id), {})),
                    split=splits[image.image_id],
                    extra={"dicom_id": image.image_id, "StudyDate": study.study_date},
                )
