"""radreport eda on every dataset layout's fixture: its figures are the records' own, counted
independently here, and its report and plots are written (text-only and label-only datasets
say what they lack)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from radreport.data.datasets.base import DATASET_KINDS, open_dataset
from radreport.eval.eda import describe, words, write

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "datasets"


@pytest.mark.parametrize("kind", DATASET_KINDS)
def test_figures_are_the_records_own(kind: str, tmp_path: Path) -> None:
    records = list(open_dataset(kind, FIXTURES / kind).records(frontal_only=False))
    eda = describe(kind, records)
    assert eda.records == len(records)
    assert eda.patients == len({r.patient_id for r in records})
    assert sum(eda.per_split.values()) == len(records)
    for finding in ("Pneumothorax", "Support Devices", "Lung Opacity"):
        assert eda.present[finding] == sum(r.labels.get(finding) == 1 for r in records)
        assert eda.uncertain[finding] == sum(r.labels.get(finding) == -1 for r in records)
    lengths = sorted(len(words(r)) for r in records if words(r))
    assert sorted(eda.lengths) == lengths
    if lengths:
        assert eda.length_words["max"] == lengths[-1]
        assert not {t for t, _ in eda.top_terms} & {"the", "and", "of"}

    written = write(eda, tmp_path)
    summary = json.loads((tmp_path / "eda.json").read_text())
    assert summary["records"] == len(records)
    report = (tmp_path / "eda.md").read_text()
    for plot in (p for p in written if p.suffix == ".png"):
        assert Image.open(plot).size[0] > 100
        assert f"]({plot.name})" in report
    if not lengths:
        assert "No report text" in report and not (tmp_path / "report_length.png").exists()
    if not eda.with_labels:
        assert "No CheXpert labels" in report


def test_length_against_findings_counts_only_present_findings() -> None:
    records = list(open_dataset("phantoms", FIXTURES / "phantoms").records(frontal_only=False))
    eda = describe("phantoms", records)
    expected: dict[int, list[int]] = {}
    for r in records:
        found = sum(v == 1 for k, v in r.labels.items() if k != "No Finding")
        expected.setdefault(found, []).append(len(words(r)))
    assert eda.length_by_findings == {n: sum(v) / len(v) for n, v in sorted(expected.items())}
