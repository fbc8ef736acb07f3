"""``radreport audit fairness --dataset``: on the MIMIC-CXR-JPG fixture (images enlarged to
256 px, as ``test_gate.py`` does, since serving refuses 32 px) the shipped model is audited on
the gate's cases; with the MIMIC-IV fixture the groups by sex, age group and race partition
the studies as the fixture tables say, without it every study is 'unknown'."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from radreport.cli import app
from radreport.data.datasets.base import open_dataset
from radreport.data.datasets.mimic_iv import read_patients, with_demographics
from radreport.eval.dataset_audit import collect_dataset, dataset_demographics
from radreport.eval.fairness import Demographics, partition
from radreport.model.report import DEFAULT_MODEL_DIR

FIXTURES = Path(__file__).parents[2] / "fixtures" / "datasets"
MIMIC_IV = FIXTURES / "mimic-iv"
# The train split's frontal studies, by hand from the fixture tables: subject 10000101 is F,
# anchor age 52 in 2153, White (its other admission says UNKNOWN); 10000202 is M, anchor age
# 91 (MIMIC-IV's cap) in 2180, Black. Studies are in 2156 and 2183.
TRAIN = {"s50000011": Demographics("F", 55, "White"),
         "s50000012": Demographics("F", 55, "White"),
         "s50000021": Demographics("M", 94, "Black")}


@pytest.fixture(scope="module")
def mimic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "mimic"
    shutil.copytree(FIXTURES / "mimic-cxr-jpg", root)
    for jpg in root.rglob("*.jpg"):
        with Image.open(jpg) as img:
            img.convert("L").resize((256, 256)).save(jpg)
    return root


def audit(mimic: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, [
        "audit", "fairness", "--dataset", "mimic-cxr-jpg", "--root", str(mimic), "--split",
        "train", "--model", str(DEFAULT_MODEL_DIR), "--resamples", "20", "--out", str(out),
        *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "fairness.json").read_text())


def test_groups_follow_the_joined_mimic_iv_demographics(mimic: Path, tmp_path: Path) -> None:
    found = collect_dataset(DEFAULT_MODEL_DIR, "mimic-cxr-jpg", mimic, "train",
                            mimic_iv=MIMIC_IV)
    assert {c.study_id: d for c, d in zip(found.data.cases, found.demographics,
                                          strict=True)} == TRAIN
    joined = with_demographics(open_dataset("mimic-cxr-jpg", mimic).records("train"),
                               read_patients(MIMIC_IV))
    assert {r.study_id: (r.sex, r.age, r.extra.get("race")) for r in joined} == {
        k: (d.sex, d.age, d.race) for k, d in TRAIN.items()}
    groups = partition(found.demographics)
    for members in groups.values():  # each attribute partitions the studies
        assert sorted(np.concatenate(list(members.values())).tolist()) == [0, 1, 2]

    saved = audit(mimic, tmp_path / "out", "--mimic-iv", str(MIMIC_IV))
    assert saved["dataset"] == "mimic-cxr-jpg" and saved["studies"] == 3
    assert saved["sizes"] == {"sex": {"F": 2, "M": 1}, "age group": {"40-59": 2, ">=80": 1},
                              "race/ethnicity": {"Black": 1, "White": 2}}
    # no region masks without MS-CXR: grounding rows are not measurable, as in the gate
    assert {"Grounding IoU", "Pointing game"} <= set(saved["not_measurable"])
    assert "Grounding IoU" not in saved["overall"]
    assert "Clinical F1 (micro)" in saved["groups"]["race/ethnicity"]["Black"]
    page = (tmp_path / "out" / "fairness.md").read_text()
    assert "## By race/ethnicity" in page and "3 of 3 train studies have a MIMIC-IV" in page
    assert "Not measurable on these studies" in page and "10000101" not in page


def test_without_mimic_iv_every_study_is_unknown(mimic: Path, tmp_path: Path) -> None:
    saved = audit(mimic, tmp_path)
    assert saved["sizes"] == {attribute: {"unknown": 3}
                              for attribute in ("sex", "age group", "race/ethnicity")}
    assert saved["flagged"] == [] and saved["spreads"] == []
    page = (tmp_path / "fairness.md").read_text()
    assert "every study is in the group 'unknown'" in page and "--mimic-iv" in page


def test_chexpert_carries_sex_and_age_and_mimic_iv_is_refused_elsewhere() -> None:
    people, note = dataset_demographics("chexpert", FIXTURES / "chexpert", "train")
    assert people and all(d.race is None for d in people.values())
    assert {d.sex for d in people.values()} <= {"F", "M", None}
    assert any(d.sex is not None and d.age is not None for d in people.values())
    assert "no race/ethnicity" in note
    with pytest.raises(ValueError, match="not chexpert"):
        dataset_demographics("chexpert", FIXTURES / "chexpert", "train", MIMIC_IV)
    result = CliRunner().invoke(app, ["audit", "fairness", "--out", "x", "--mimic-iv",
                                      str(MIMIC_IV)])
    assert result.exit_code != 0 and "for mimic-cxr-jpg" in result.output
