"""IU X-ray (OpenI, Indiana University) as distributed on Kaggle.

Layout read ("Chest X-rays (Indiana University)")::

    indiana_reports.csv       uid, MeSH, Problems, image, indication, comparison,
                              findings, impression
    indiana_projections.csv   uid, filename, projection (Frontal / Lateral)
    images/images_normalized/<filename>          e.g. 1_IM-0001-4001.dcm.png

Each uid is one study of one patient. There is no official split, so the patient split is
drawn with :func:`patient_split`. The projections say only "Frontal", so frontal images
get the view "FRONTAL" (PA or AP unknown). There are no CheXpert labels; the MeSH and
Problems annotations are kept in ``extra``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from radreport.data.datasets.base import (
    ImageRef,
    ReportDataset,
    ReportRecord,
    clean_report_text,
    normalize_view,
    patient_split,
    read_csv,
    select_images,
)

REPORTS_CSV = "indiana_reports.csv"
PROJECTIONS_CSV = "indiana_projections.csv"
IMAGES_DIR = Path("images", "images_normalized")
_EXTRA_COLUMNS = ("MeSH", "Problems", "image", "indication", "comparison")


class IuXray(ReportDataset):
    """IU X-ray reports with their frontal (or all) projections.

    ``per_image=False`` yields one record per study with one frontal image (the first by
    file name when there are several); ``per_image=True`` one per image. A report without
    any image is yielded with ``image_path=None`` only when ``frontal_only`` is False.
    """

    name: ClassVar[str] = "iu-xray"

    def __init__(self, root: Path, fractions: Sequence[float] = (0.9, 0.05, 0.05),
                 salt: str = "radreport", per_image: bool = False) -> None:
        super().__init__(root)
        self.fractions = tuple(fractions)
        self.salt = salt
        self.per_image = per_image

    @classmethod
    def looks_like(cls, root: Path) -> bool:
        return (root / REPORTS_CSV).is_file() and (root / PROJECTIONS_CSV).is_file()

    def _images(self) -> dict[str, list[ImageRef]]:
        by_uid: dict[str, list[ImageRef]] = defaultdict(list)
        for row in read_csv(self.root / PROJECTIONS_CSV):
            by_uid[row["uid"]].append(ImageRef(self.root / IMAGES_DIR / row["filename"],
                                               normalize_view(row["projection"]),
                                               row["filename"]))
        return by_uid

    def _all_records(self, frontal_only: bool) -> Iterator[ReportRecord]:
        images = self._images()
        for row in read_csv(self.root / REPORTS_CSV):
            uid = row["uid"]
            chosen: list[ImageRef | None] = list(
                select_images(images.get(uid, []), frontal_only=frontal_only,
                              per_image=self.per_image))
            if not chosen and not frontal_only:
                chosen = [None]
            for image in chosen:
                yield self._record(row, image)

    def _record(self, row: dict[str, str], image: ImageRef | None) -> ReportRecord:
        uid = row["uid"]
        return ReportRecord(
            dataset=self.name,
            study_id=uid,
            patient_id=uid,
            image_path=None if image is None else image.path,
            view=None if image is None else image.view,
            findings=clean_report_text(row.get("findings") or ""),
            impression=clean_report_text(row.get("impression") or ""),
            labels={},
            split=patient_split(uid, self.fractions, self.salt),
            extra={col: clean_report_text(row.get(col) or "") for col in _EXTRA_COLUMNS},
        )
