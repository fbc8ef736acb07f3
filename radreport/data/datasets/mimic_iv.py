"""Demographics for MIMIC-CXR studies from MIMIC-IV (optional; MIMIC-CXR-JPG has none).

Layout read (``.csv`` accepted in place of ``.csv.gz``; ``root`` is the MIMIC-IV release
folder holding ``hosp/``, or ``hosp/`` itself)::

    hosp/patients.csv.gz     subject_id, gender, anchor_age, anchor_year, ...
    hosp/admissions.csv.gz   subject_id, hadm_id, admittime, ..., race (``ethnicity`` in v1.0)

Joined on ``subject_id``; MIMIC-CXR and MIMIC-IV share subjects and each subject's date
shift, so the age at a study is ``anchor_age + (study year - anchor_year)``. MIMIC-IV
caps ``anchor_age`` at 91 for patients older than 89; those fall in the oldest age bin
whatever the offset. Race is recorded per admission and varies between admissions: a
subject's race is the most frequent informative value (the latest admission's on a tie),
mapped to a coarse group; "unknown", "unable to obtain" and "declined" count as missing.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from radreport.data.datasets.base import ReportRecord, read_csv

MISSING_RACE = frozenset({"", "UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER",
                          "UNKNOWN/NOT SPECIFIED"})
# Prefixes of MIMIC-IV's race values, most specific first, and the group each belongs to.
RACE_GROUPS: tuple[tuple[str, str], ...] = (
    ("WHITE", "White"), ("PORTUGUESE", "White"),
    ("BLACK", "Black"),
    ("HISPANIC", "Hispanic/Latino"), ("SOUTH AMERICAN", "Hispanic/Latino"),
    ("ASIAN", "Asian"),
    ("AMERICAN INDIAN", "American Indian/Alaska Native"),
    ("NATIVE HAWAIIAN", "Native Hawaiian/Pacific Islander"),
    ("MULTIPLE RACE", "Other"), ("OTHER", "Other"),
)


@dataclass(frozen=True)
class MimicIvPatient:
    subject_id: str
    sex: str | None  # "F" or "M"
    anchor_age: int | None
    anchor_year: int | None
    race: str | None  # a group of ``RACE_GROUPS``

    def age_at(self, year: int | None) -> int | None:
        """Age in a (shifted) calendar year; the anchor age when the year is unknown."""
        if self.anchor_age is None:
            return None
        if year is None or self.anchor_year is None:
            return self.anchor_age
        return self.anchor_age + (year - self.anchor_year)


def race_group(raw: str | None) -> str | None:
    """A coarse group for one of MIMIC-IV's race values; None when it is missing."""
    value = " ".join((raw or "").split()).upper()
    if value in MISSING_RACE:
        return None
    return next((group for prefix, group in RACE_GROUPS if value.startswith(prefix)), "Other")


def find_hosp_table(root: Path, table: str) -> Path | None:
    for folder in (root / "hosp", root):
        for name in (f"{table}.csv.gz", f"{table}.csv"):
            if (folder / name).is_file():
                return folder / name
    return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def subject_races(admissions: Path) -> dict[str, str]:
    """subject_id -> race group, by the rule in the module docstring."""
    seen: dict[str, list[tuple[str, str]]] = {}
    for row in read_csv(admissions):
        group = race_group(row.get("race", row.get("ethnicity")))
        if group is not None:
            seen.setdefault(row["subject_id"], []).append((row.get("admittime", ""), group))
    races = {}
    for subject, entries in seen.items():
        counts = Counter(group for _, group in entries)
        latest = {group: time for time, group in sorted(entries)}
        races[subject] = max(counts, key=lambda g: (counts[g], latest[g]))
    return races


def read_patients(root: Path) -> dict[str, MimicIvPatient]:
    """Every subject of ``patients``, with race from ``admissions`` when that table exists."""
    patients = find_hosp_table(Path(root), "patients")
    if patients is None:
        raise FileNotFoundError(f"no hosp/patients.csv[.gz] under {root}")
    admissions = find_hosp_table(Path(root), "admissions")
    races = subject_races(admissions) if admissions is not None else {}
    out = {}
    for row in read_csv(patients):
        subject = row["subject_id"]
        sex = row.get("gender", "").strip().upper()
        out[subject] = MimicIvPatient(subject, sex if sex in ("F", "M") else None,
                                      _int(row.get("anchor_age")), _int(row.get("anchor_year")),
                                      races.get(subject))
    return out


def subject_of(record: ReportRecord) -> str:
    """MIMIC-CXR's patient id "p10000032" as MIMIC-IV's subject_id "10000032"."""
    return record.patient_id.removeprefix("p")


def study_year(record: ReportRecord) -> int | None:
    date = record.extra.get("StudyDate", "")
    return _int(date[:4]) if len(date) >= 4 else None


def with_demographics(records: Iterable[ReportRecord],
                      patients: dict[str, MimicIvPatient]) -> list[ReportRecord]:
    """The records with ``sex``, ``age`` and ``extra["race"]`` filled from MIMIC-IV.

    A subject MIMIC-IV does not have keeps what the record had (normally nothing).
    """
    out = []
    for record in records:
        patient = patients.get(subject_of(record))
        if patient is None:
            out.append(record)
            continue
        extra = dict(record.extra)
        if patient.race is not None:
            extra["race"] = patient.race
        out.append(dataclasses.replace(record, sex=patient.sex or record.sex,
                                       age=patient.age_at(study_year(record)), extra=extra))
    return out
