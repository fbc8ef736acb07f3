"""The safety net: calibrated read-out, OOD flag, review reasons, calibration.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radreport.data.labels import CHEXPERT_LABELS
from radreport.model.calibration import Calibration
from radreport.model.ood import MahalanobisScorer
from radreport.model.safety import OOD_REASON, SafetyNet, model_review_reasons


def fitted_net() -> SafetyNet:
    rng = np.random.default_rng(0)
    targets = rng.random((400, 14)) < 0.3
    logits = np.where(targets, 2.0, -2.0) + rng.normal(0, 1.5, (400, 14))
    calibration = Calibration.fit(logits, targets.astype(float))
    features = rng.normal(size=(500, 8))
    scorer = MahalanobisScorer.fit(features)
    scorer = scorer.with_threshold(scorer.score(rng.normal(size=(200, 8))), 0.05)
    return SafetyNet(CHEXPERT_LABELS, calibration, scorer)


def test_uncalibrated_folder_reads_as_v1_did() -> None:
    net = SafetyNet(CHEXPERT_LABELS)
    probs = np.full((1, 14), 0.2)
    probs[0, CHEXPERT_LABELS.index("Edema")] = 0.7
    (out,) = net.assess(probs, None)
    assert out.calibrated_probs["Edema"] == pytest.approx(0.7)
    assert set(out.findings_present) == {"Edema", "Lung Opacity"}  # closed under parents
    assert out.ood_score is None and not out.out_of_distribution
    assert out.uncertain_findings == ()


def test_unfamiliar_features_are_flagged_and_claim_no_confidence() -> None:
    net = fitted_net()
    probs = np.full((2, 14), 0.1)
    features = np.zeros((2, 8))
    features[1] = 25.0  # far outside the training features
    familiar, unfamiliar = net.assess(probs, features)
    assert not familiar.out_of_distribution and familiar.calibrated_confidence > 0
    assert unfamiliar.out_of_distribution and unfamiliar.calibrated_confidence == 0.0
    assert unfamiliar.ood_score is not None and familiar.ood_score is not None
    assert unfamiliar.ood_score > unfamiliar.ood_threshold > familiar.ood_score  # type: ignore[operator]


def test_calibration_file_round_trips(tmp_path: Path) -> None:
    net = fitted_net()
    net.save(tmp_path / "calibration.json")
    again = SafetyNet.load(tmp_path / "calibration.json", CHEXPERT_LABELS)
    probs = np.random.default_rng(1).random((5, 14))
    features = np.random.default_rng(2).normal(size=(5, 8))
    assert again.assess(probs, features) == net.assess(probs, features)
    with pytest.raises(ValueError, match="calibrates labels"):
        SafetyNet.load(tmp_path / "calibration.json", CHEXPERT_LABELS[::-1])


def test_review_reasons_name_what_the_model_doubts() -> None:
    assert model_review_reasons(["Fracture"], [], False, ["Fracture"]) == []
    assert model_review_reasons(["Fracture"], [], False, []) == [
        "critical finding disagreement: Fracture (label head only)"]
    assert model_review_reasons([], ["Pneumothorax", "Edema"], True, ["Pneumothorax"]) == [
        OOD_REASON, "critical finding disagreement: Pneumothorax (text only)",
        "uncertain critical finding: Pneumothorax"]  # Edema is not critical
