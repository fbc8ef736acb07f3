"""Baseline (a): template reports say exactly what the label head predicted."""

from __future__ import annotations

import pytest

from radreport.data.labels import CHEXPERT_LABELS, with_parents
from radreport.eval.baselines import NORMAL_IMPRESSION, template_report
from radreport.eval.labeler import report_vector


def probs(*positive: str) -> dict[str, float]:
    return {name: (0.9 if name in positive else 0.1) for name in CHEXPERT_LABELS}


def read_back(text: str) -> set[str]:
    return {name for name, value in report_vector(text).items() if value}


@pytest.mark.parametrize("label", [n for n in CHEXPERT_LABELS if n != "No Finding"])
def test_each_predicted_label_is_read_back_by_the_labeler(label: str) -> None:
    text = template_report(probs(label))
    expected = with_parents({label})
    if expected <= {"Support Devices"}:
        expected |= {"No Finding"}  # devices are not a pathology
    assert read_back(text) == expected


def test_no_positive_label_gives_a_normal_report_with_pertinent_negatives() -> None:
    text = template_report(probs())
    assert text.endswith(NORMAL_IMPRESSION)
    assert "No pleural effusion." in text and "There is no pneumothorax." in text
    assert read_back(text) == {"No Finding"}


def test_threshold_and_implied_parent() -> None:
    label_probs = probs("Consolidation", "Lung Opacity")
    label_probs["Pleural Effusion"] = 0.45
    text = template_report(label_probs, threshold=0.5)
    assert "airspace opacity" not in text  # implied by consolidation, not said twice
    assert read_back(text) == {"Consolidation", "Lung Opacity"}
    assert "There is a pleural effusion." in template_report(label_probs, threshold=0.4)
