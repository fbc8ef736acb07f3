"""The MS-CXR loader on the fixture (the release's file name and columns): values, grouping
by image and phrase, the category-to-CheXpert mapping, clipping, and errors that name the row
but never its text."""

from __future__ import annotations

from pathlib import Path

import pytest

from radreport.data.datasets.mimic import MimicCxrJpg
from radreport.data.datasets.ms_cxr import (
    MS_CXR_FILE,
    Box,
    MsCxrError,
    read_ms_cxr,
)
from radreport.data.labels import CHEXPERT_LABELS

FIXTURES = Path(__file__).parents[2] / "fixtures" / "datasets"
CSV = FIXTURES / "ms-cxr" / MS_CXR_FILE
HEADER = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split\n"
GOOD = "d1,Pneumothorax,Large right pneumothorax,files/p1/p1/s1/d1.jpg,10,20,30,40,100,200,test\n"


def write(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / MS_CXR_FILE
    path.write_text(header + "".join(rows))
    return path


def test_fixture_groups_boxes_by_image_and_phrase() -> None:
    images = read_ms_cxr(CSV)
    assert len(images) == 4
    heart = images["06a435dc-564057d0-016dbaf1-757e9747-8ea2193b"]
    assert (heart.width, heart.height) == (2539, 3050)
    assert [(p.category, p.label, len(p.boxes)) for p in heart.phrases] == [
        ("Cardiomegaly", "Cardiomegaly", 1), ("Pleural Effusion", "Pleural Effusion", 2),
        ("Atelectasis", "Atelectasis", 1)]
    assert heart.phrases[0].text == "Heart size is moderately enlarged"
    assert heart.phrases[0].boxes == (Box(884.0, 1497.0, 1116.0, 903.0),)
    assert heart.phrases[1].boxes[1] == Box(1652.0, 2310.0, 702.0, 498.0)
    every = {p.label for image in images.values() for p in image.phrases}
    assert every <= set(CHEXPERT_LABELS)


def test_fixture_images_are_images_of_the_mimic_fixture() -> None:
    mimic = MimicCxrJpg(FIXTURES / "mimic-cxr-jpg", per_image=True)
    dicom_ids = {r.extra["dicom_id"] for r in mimic.records()
                 if r.image_path is not None and r.image_path.is_file()}
    assert set(read_ms_cxr(CSV)) <= dicom_ids


def test_category_column_alias_unknown_categories_and_clipping(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("Pneumothorax", "Nodule"),
                 "d1,Pneumothorax,Large right pneumothorax,p,-5,150,30,80,100,200,test\n",
                 header=HEADER.replace("category_name", "category"))
    (image,) = read_ms_cxr(path).values()
    nodule, pneumothorax = image.phrases
    assert nodule.category == "Nodule" and nodule.label is None  # kept, no CheXpert label
    assert pneumothorax.label == "Pneumothorax"
    assert pneumothorax.boxes == (Box(0.0, 150.0, 25.0, 50.0),)  # clipped to 100 x 200


@pytest.mark.parametrize(("row", "message"), [
    (GOOD.replace(",10,20,", ",ten,20,"), "row 2: x is not a number"),
    (GOOD.replace(",30,40,", ",0,40,"), "row 2: w and h must be positive"),
    (GOOD.replace(",10,20,", ",150,20,"), "row 2: the box lies outside"),
    (GOOD.replace(",100,200,", ",100,0,"), "row 2: image_width and image_height"),
    (GOOD.replace(",100,200,", ",100,250,"), "row 2: image_width/image_height differ"),
    (GOOD.replace("Large right pneumothorax", ""), "row 2: label_text is empty"),
    (GOOD.replace(",10,20,", ",nan,20,"), "row 2: x is not finite"),
])
def test_bad_rows_are_named_by_number_without_their_text(tmp_path: Path, row: str,
                                                         message: str) -> None:
    with pytest.raises(MsCxrError, match=message) as err:
        read_ms_cxr(write(tmp_path, GOOD, row))
    assert "pneumothorax" not in str(err.value).lower() and "d1" not in str(err.value)


def test_missing_columns_and_file(tmp_path: Path) -> None:
    with pytest.raises(MsCxrError, match=r"lacks columns \['h', 'category_name'\]"):
        read_ms_cxr(write(tmp_path, header="dicom_id,label_text,x,y,w,image_width,"
                                           "image_height\n"))
    with pytest.raises(FileNotFoundError):
        read_ms_cxr(tmp_path / "nothing.csv")
