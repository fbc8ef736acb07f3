"""``radreport audit fairness --dataset``: the audit's inputs from a real dataset's split.

The studies are the gate's (``radreport.eval.gate.load_cases``: decoded as served, labels
from the dataset, MS-CXR's boxes optional) and are drafted as the gate and ``radreport
evaluate`` draft them, so every figure shares their metric functions. Demographics come from
the dataset's own records, matched to the cases by study id: CheXpert carries sex and age,
IU X-ray carries none, and MIMIC-CXR-JPG gets sex, age at the study and race/ethnicity only
from MIMIC-IV (``mimic_iv.with_demographics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from radreport.data.datasets.base import open_dataset
from radreport.eval.audit import MAIN_SYSTEM, AuditData, analyse
from radreport.eval.evaluate import run_model
from radreport.eval.fairness import Demographics, record_demographics

MIMIC = "mimic-cxr-jpg"
# What each layout records about the patient, said in the report.
CARRIES = {
    "chexpert": "CheXpert records sex and age; it has no race/ethnicity, so that group is "
                "'unknown' for every study.",
    "iu-xray": "IU X-ray records no sex, age or race/ethnicity: every study is in the group "
               "'unknown', so this audit can only report all studies; no group is compared.",
    MIMIC: "MIMIC-CXR-JPG records no demographics and no MIMIC-IV folder was given "
           "(--mimic-iv): every study is in the group 'unknown', so no group is compared.",
}


@dataclass(frozen=True)
class DatasetAudit:
    data: AuditData
    demographics: list[Demographics]  # one per case, in case order
    notes: list[str]


def dataset_demographics(kind: str, root: Path, split: str,
                         mimic_iv: Path | None = None) -> tuple[dict[str, Demographics], str]:
    """study id -> the patient's demographics for ``split``'s frontal records, and a note
    saying where they come from (MIMIC-IV only for MIMIC-CXR-JPG)."""
    if mimic_iv is not None and kind != MIMIC:
        raise ValueError(f"MIMIC-IV's demographics join MIMIC-CXR-JPG's subjects, not {kind}")
    records = list(open_dataset(kind, root).records(split, frontal_only=True))
    if mimic_iv is None:
        note = CARRIES.get(kind, f"{kind}: demographics as its records carry them.")
    else:
        from radreport.data.datasets.mimic_iv import read_patients, subject_of, with_demographics

        patients = read_patients(mimic_iv)
        matched = sum(subject_of(r) in patients for r in records)
        records = with_demographics(records, patients)
        note = (f"Sex, age at the study and race/ethnicity (coarse groups) from MIMIC-IV's "
                f"hosp/patients and hosp/admissions, joined on subject_id: {matched} of "
                f"{len(records)} {split} studies have a MIMIC-IV subject; the others, and "
                "values MIMIC-IV lacks, are 'unknown'.")
    people = dict(zip((r.study_id for r in records), record_demographics(records), strict=True))
    return people, note


def collect_dataset(model_dir: Path, kind: str, root: Path, split: str = "test",
                    limit: int | None = None, ms_cxr: Path | None = None,
                    mimic_iv: Path | None = None) -> DatasetAudit:
    """The gate's cases for ``split``, drafted by ``model_dir``, with each study's
    demographics; ValueError for a bad dataset/option combination or an empty split."""
    from radreport.eval.gate import load_cases
    from radreport.model.report import MODEL_INFO_FILE, ModelInfo

    people, note = dataset_demographics(kind, root, split, mimic_iv)
    size = ModelInfo.load(Path(model_dir) / MODEL_INFO_FILE).image_size  # MS-CXR masks
    cases, _, notes = load_cases(kind, root, split, limit, 1, ms_cxr=ms_cxr, mask_size=size)
    data = analyse(split, cases, run_model(MAIN_SYSTEM, Path(model_dir), cases))
    demographics = [people.get(c.study_id, Demographics()) for c in cases]
    return DatasetAudit(data, demographics, [*notes, note])
