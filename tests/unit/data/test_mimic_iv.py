"""MIMIC-IV demographics joined onto the MIMIC-CXR-JPG fixture's records on subject_id."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from radreport.data.datasets.base import open_dataset
from radreport.data.datasets.mimic_iv import (
    MimicIvPatient,
    race_group,
    read_patients,
    with_demographics,
)
from radreport.eval.fairness import partition, record_demographics

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "datasets"
MIMIC_IV = FIXTURES / "mimic-iv"


def test_patients_and_admissions_are_read() -> None:
    patients = read_patients(MIMIC_IV)
    assert set(patients) == {"10000101", "10000202", "11000303", "12000404", "18000606"}
    assert patients["10000101"] == MimicIvPatient("10000101", "F", 52, 2153, "White")
    assert patients["11000303"].race == "Hispanic/Latino"  # 2 of 3 admissions
    assert patients["12000404"].race is None  # no admission
    assert read_patients(MIMIC_IV / "hosp") == patients  # hosp/ itself works too


@pytest.mark.parametrize(("raw", "group"), [
    ("WHITE - OTHER EUROPEAN", "White"), ("BLACK/CAPE VERDEAN", "Black"),
    ("HISPANIC OR LATINO", "Hispanic/Latino"), ("ASIAN - SOUTH EAST ASIAN", "Asian"),
    ("AMERICAN INDIAN/ALASKA NATIVE", "American Indian/Alaska Native"),
    ("NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER", "Native Hawaiian/Pacific Islander"),
    ("MULTIPLE RACE/ETHNICITY", "Other"), ("SOMETHING NEW", "Other"),
    ("UNKNOWN", None), ("PATIENT DECLINED TO ANSWER", None), ("", None), (None, None)])
def test_race_groups(raw: str | None, group: str | None) -> None:
    assert race_group(raw) == group


def test_race_tie_goes_to_the_latest_admission_and_v1_ethnicity_is_read(tmp_path: Path) -> None:
    hosp = tmp_path / "hosp"
    hosp.mkdir()
    (hosp / "patients.csv").write_text("subject_id,gender,anchor_age,anchor_year\n1,M,40,2100\n")
    (hosp / "admissions.csv").write_text(
        "subject_id,hadm_id,admittime,ethnicity\n1,9,2101-05-01 00:00:00,ASIAN\n"
        "1,8,2100-01-01 00:00:00,WHITE\n")
    assert read_patients(tmp_path)["1"].race == "Asian"


def test_join_fills_sex_age_at_the_study_and_race() -> None:
    records = list(open_dataset("mimic-cxr-jpg", FIXTURES / "mimic-cxr-jpg")
                   .records(frontal_only=False))
    joined = with_demographics(records, read_patients(MIMIC_IV))
    assert [r.study_id for r in joined] == [r.study_id for r in records]
    by_study = {r.study_id: r for r in joined}
    # anchor_age + (StudyDate year - anchor_year)
    assert (by_study["s50000011"].sex, by_study["s50000011"].age) == ("F", 52 + 2156 - 2153)
    assert by_study["s50000011"].extra["race"] == "White"
    assert (by_study["s50000021"].sex, by_study["s50000021"].age) == ("M", 91 + 3)
    assert by_study["s50000021"].extra["race"] == "Black"
    assert by_study["s50000031"].age == 34
    assert "race" not in by_study["s50000041"].extra and by_study["s50000041"].age == 79
    unknown = by_study["s50000051"]  # subject 19000505 is not in MIMIC-IV
    assert (unknown.sex, unknown.age, "race" in unknown.extra) == (None, None, False)
    assert by_study["s50000011"].labels == next(
        r for r in records if r.study_id == "s50000011").labels  # nothing else changes

    groups = partition(record_demographics(joined))
    assert set(groups) == {"sex", "age group", "race/ethnicity"}
    for members in groups.values():
        assert sorted(np.concatenate(list(members.values())).tolist()) == list(
            range(len(joined)))
    studies = {g: sorted(joined[i].study_id for i in ix)
               for g, ix in groups["race/ethnicity"].items()}
    assert studies["Hispanic/Latino"] == ["s50000031"]
    assert studies["unknown"] == ["s50000041", "s50000042", "s50000051"]
    assert [joined[i].study_id for i in groups["age group"][">=80"]] == ["s50000021"]


def test_gzip_and_plain_tables_give_the_same_patients(tmp_path: Path) -> None:
    hosp = tmp_path / "hosp"
    hosp.mkdir()
    for table in ("patients", "admissions"):
        with gzip.open(MIMIC_IV / "hosp" / f"{table}.csv.gz", "rb") as src, \
                open(hosp / f"{table}.csv", "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert read_patients(tmp_path) == read_patients(MIMIC_IV)
    with pytest.raises(FileNotFoundError):
        read_patients(tmp_path / "nothing")
