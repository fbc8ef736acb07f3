"""MS-CXR phrase-grounding boxes (Boecking et al., ECCV 2022) on top of MIMIC-CXR-JPG.

Layout read: the release's one CSV, ``MS_CXR_Local_Alignment_v1.1.0.csv`` (v1.0.0 has the
same columns), one row per box::

    dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height, split

``x, y`` is a box's top-left corner and ``w, h`` its size, in pixels of the original image of
``image_width`` x ``image_height`` (MIMIC-CXR-JPG keeps the DICOM's size). Several rows with
one ``label_text`` are the boxes of one phrase. ``category`` is accepted for
``category_name``; ``path`` and ``split`` are optional and not used: which images train or
test is MIMIC-CXR-JPG's own split of the study, so a model never trains on a test patient.

The eight categories are CheXpert label names; a category we do not know keeps its boxes
(they still ground the report sentence) with no label. Errors name the row number and the
column, never the row's values (report phrases are free text).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from radreport.data.datasets.base import open_text
from radreport.data.labels import CHEXPERT_LABELS

MS_CXR_FILE: Final = "MS_CXR_Local_Alignment_v1.1.0.csv"
MS_CXR_CATEGORIES: Final[tuple[str, ...]] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity",
    "Pleural Effusion", "Pneumonia", "Pneumothorax")
# MS-CXR category -> our CheXpert label name (today the names are the same).
CATEGORY_LABELS: Final[dict[str, str]] = {name: name for name in MS_CXR_CATEGORIES
                                          if name in CHEXPERT_LABELS}
REQUIRED: Final[tuple[str, ...]] = ("dicom_id", "label_text", "x", "y", "w", "h",
                                    "image_width", "image_height")
CATEGORY_COLUMNS: Final[tuple[str, ...]] = ("category_name", "category")


class MsCxrError(ValueError):
    """A malformed MS-CXR CSV; the message names the row, never its text."""


@dataclass(frozen=True)
class Box:
    """Pixels of the original image: top-left corner and size, clipped to the image."""

    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Phrase:
    """One report phrase and its boxes."""

    category: str  # as MS-CXR writes it
    label: str | None  # our CheXpert label name, None when the category does not map
    text: str  # ``label_text``: words of the image's report
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class GroundedImage:
    """The phrases of one image (one ``dicom_id``) and the size their boxes were drawn on."""

    dicom_id: str
    width: int
    height: int
    phrases: tuple[Phrase, ...]


def read_ms_cxr(path: str | Path) -> dict[str, GroundedImage]:
    """Images by ``dicom_id``, their phrases in the file's order; ``MsCxrError`` on a bad
    row, ``FileNotFoundError`` when there is no file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MS-CXR CSV {path} does not exist")
    sizes: dict[str, tuple[int, int]] = {}
    phrases: dict[str, dict[tuple[str, str], list[Box]]] = {}
    for number, row in _rows(path):
        dicom_id, category, text, size, box = _parse(number, row)
        if sizes.setdefault(dicom_id, size) != size:
            raise MsCxrError(f"MS-CXR row {number}: image_width/image_height differ from an "
                             "earlier row of the same dicom_id")
        phrases.setdefault(dicom_id, {}).setdefault((category, text), []).append(box)
    return {d: GroundedImage(d, *sizes[d], tuple(
        Phrase(category, CATEGORY_LABELS.get(category), text, tuple(boxes))
        for (category, text), boxes in groups.items())) for d, groups in phrases.items()}


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number, row): row 1 is the first line after the header."""
    with open_text(path) as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or ())
        missing = [c for c in REQUIRED if c not in columns]
        if not columns & set(CATEGORY_COLUMNS):
            missing.append("category_name")
        if missing:
            raise MsCxrError(f"MS-CXR CSV {path.name} lacks columns {missing}")
        yield from enumerate(reader, start=1)


def _parse(number: int, row: Mapping[str, str | None]
           ) -> tuple[str, str, str, tuple[int, int], Box]:
    def text(column: str) -> str:
        value = (row.get(column) or "").strip()
        if not value:
            raise MsCxrError(f"MS-CXR row {number}: {column} is empty")
        return value

    def number_of(column: str) -> float:
        try:
            value = float(text(column))
        except ValueError:
            raise MsCxrError(f"MS-CXR row {number}: {column} is not a number") from None
        if not math.isfinite(value):
            raise MsCxrError(f"MS-CXR row {number}: {column} is not finite")
        return value

    category = text("category_name" if row.get("category_name") else "category")
    width, height = number_of("image_width"), number_of("image_height")
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise MsCxrError(f"MS-CXR row {number}: image_width and image_height must be "
                         "positive whole numbers")
    x, y, w, h = (number_of(c) for c in ("x", "y", "w", "h"))
    if w <= 0 or h <= 0:
        raise MsCxrError(f"MS-CXR row {number}: w and h must be positive")
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        raise MsCxrError(f"MS-CXR row {number}: the box lies outside the "
                         "image_width x image_height image")
    return (text("dicom_id"), category, text("label_text"), (int(width), int(height)),
            Box(x0, y0, x1 - x0, y1 - y0))
