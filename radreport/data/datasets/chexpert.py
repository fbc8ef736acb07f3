"""CheXpert v1.0 (full or "-small"): images with the 14 labels, no report text.

Layout read::

    CheXpert-v1.0-small/train.csv   Path, Sex, Age, Frontal/Lateral, AP/PA, 14 label columns
    CheXpert-v1.0-small/valid.csv   the same, labels by radiologist consensus
    CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg

``Path`` starts with the dataset folder's own name, i.e. it is relative to the folder that
contains the dataset; ``root`` may be either folder. valid.csv is the "validate" split;
train.csv is split by patient into "train" and "test" (CheXpert's own test set is not
distributed with these files), so no CheXpert patient ever appears in two splits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar, Final

from radreport.data.datasets.base import (
    ImageRef,
    ReportDataset,
    ReportRecord,
    csv_header,
    normalize_view,
    parse_labels,
    patient_split,
    read_csv,
    select_images,
)
from radreport.data.labels import LabelVector

CSV_FILES: Final[dict[str, str | None]] = {"train.csv": None, "valid.csv": "validate"}
_SEX: Final[dict[str, str]] = {"Male": "M", "Female": "F"}


@dataclass
class _Study:
    patient: str
    study: str
    split: str
    sex: str | None
    age: int | None
    labels: LabelVector
    images: list[ImageRef]


def _is_chexpert_csv(path: Path) -> bool:
    header = csv_header(path)
    return {"Path", "Frontal/Lateral", "AP/PA"} <= set(header)


def dataset_dir(root: Path) -> Path | None:
    """The folder holding train.csv / valid.csv: ``root`` itself or a CheXpert-v1.0* in it."""
    for folder in (root, *sorted(root.glob("CheXpert-v1.0*"))):
        if any(_is_chexpert_csv(folder / name) for name in CSV_FILES):
            return folder
    return None


def _view(row: dict[str, str]) -> str | None:
    """LATERAL for laterals; PA / AP for frontals, FRONTAL when AP/PA says something else."""
    if row.get("Frontal/Lateral") == "Lateral":
        return "LATERAL"
    view = normalize_view(row.get("AP/PA"))
    return view if view in ("PA", "AP") else "FRONTAL"


def _age(raw: str | None) -> int | None:
    return int(float(raw)) if raw and raw.strip() else None


class CheXpert(ReportDataset):
    """CheXpert labels per study (labels only: findings and impression are empty).

    ``per_image=False`` yields one record per study with its preferred frontal image;
    ``per_image=True`` one per image. ``train_fractions`` split train.csv patients between
    train, validate and test; the default sends none of them to validate.
    """

    name: ClassVar[str] = "chexpert"

    def __init__(self, root: Path, train_fractions: Sequence[float] = (0.95, 0.0, 0.05),
                 salt: str = "radreport", per_image: bool = False) -> None:
        super().__init__(root)
        found = dataset_dir(self.root)
        assert found is not None  # checked by looks_like
        self.dataset_dir = found
        self.train_fractions = tuple(train_fractions)
        self.salt = salt
        self.per_image = per_image

    @classmethod
    def looks_like(cls, root: Path) -> bool:
        return dataset_dir(root) is not None

    def _image_path(self, csv_path: str) -> Path:
        """CSV paths name the dataset folder first; resolve them inside ours, whatever its name."""
        parts = PurePosixPath(csv_path).parts
        return self.dataset_dir.joinpath(*parts[1:])

    def _new_study(self, row: dict[str, str], split: str | None) -> _Study:
        patient, study = PurePosixPath(row["Path"]).parts[-3:-1]
        return _Study(
            patient=patient,
            study=study,
            split=split or patient_split(patient, self.train_fractions, self.salt),
            sex=_SEX.get(row.get("Sex", "")),
            age=_age(row.get("Age")),
            labels=parse_labels(row),
            images=[],
        )

    def _studies(self, csv_name: str, split: str | None) -> Iterator[_Study]:
        """Rows of one CSV grouped by study; labels and demographics repeat on every row."""
        studies: dict[tuple[str, ...], _Study] = {}
        for row in read_csv(self.dataset_dir / csv_name):
            parts = PurePosixPath(row["Path"]).parts
            key = parts[-3:-1]
            if key not in studies:
                studies[key] = self._new_study(row, split)
            image = ImageRef(self._image_path(row["Path"]), _view(row), parts[-1])
            studies[key].images.append(image)
        yield from studies.values()

    def _all_records(self, frontal_only: bool) -> Iterator[ReportRecord]:
        for csv_name, split in CSV_FILES.items():
            if not (self.dataset_dir / csv_name).is_file():
                continue
            for study in self._studies(csv_name, split):
                for image in select_images(study.images, frontal_only=frontal_only,
                                           per_image=self.per_image):
                    yield ReportRecord(
                        dataset=self.name,
                        study_id=f"{study.patient}_{study.study}",
                        patient_id=study.patient,
                        image_path=image.path,
                        view=image.view,
                        findings="",
                        impression="",
                        labels=dict(study.labels),
                        split=study.split,
                        sex=study.sex,
                        age=study.age,
                    )
