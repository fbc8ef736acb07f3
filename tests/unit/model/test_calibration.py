"""Label-head calibration: temperatures, ECE, thresholds, review bands (no torch needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit

from radreport.data.labels import CHEXPERT_LABELS, CRITICAL_LABELS
from radreport.model.calibration import (
    Calibration,
    LabelCalibration,
    expected_calibration_error,
    f1_threshold,
    fit_temperature,
    logits_from_probs,
    sensitivity_threshold,
    study_confidence,
    uncertain_band,
)


def recall_specificity(probs: np.ndarray, targets: np.ndarray, t: float) -> tuple[float, float]:
    predicted, y = probs >= t, targets.astype(bool)
    return float(predicted[y].mean()), float((~predicted[~y]).mean())


def test_temperature_recovers_a_known_scale_and_lowers_ece() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 3.0, 20_000)
    y = (rng.random(z.size) < expit(z / 2.5)).astype(np.int64)
    t = fit_temperature(z, y)
    assert abs(t - 2.5) < 0.2
    assert expected_calibration_error(expit(z / t), y) < expected_calibration_error(expit(z), y)


def test_degenerate_targets_keep_temperature_one() -> None:
    z = np.linspace(-3, 3, 50)
    assert fit_temperature(z, np.zeros(50, int)) == 1.0
    assert fit_temperature(z, np.ones(50, int)) == 1.0


def test_ece_is_zero_when_calibrated_and_matches_a_hand_computation() -> None:
    probs = np.array([0.25] * 4 + [0.75] * 4)
    targets = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert expected_calibration_error(probs, targets) == pytest.approx(0.0)
    # bins=2: [0, .5) holds .1, .3 (mean .2, targets .5); [.5, 1] holds .9 and 1.0
    # (mean .95, targets .5): 2/4 * .3 + 2/4 * .45
    probs, targets = np.array([0.1, 0.3, 0.9, 1.0]), np.array([0, 1, 1, 0])
    assert expected_calibration_error(probs, targets, bins=2) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="no samples"):
        expected_calibration_error(np.array([]), np.array([]))


def test_f1_threshold_separates_separable_data() -> None:
    probs = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8])
    targets = np.array([0, 0, 0, 0, 1, 1, 1])
    assert f1_threshold(probs, targets) == pytest.approx(0.5)


def test_sensitivity_threshold_is_the_highest_reaching_the_sensitivity() -> None:
    rng = np.random.default_rng(1)
    probs = expit(np.concatenate([rng.normal(-3, 1, 2000), rng.normal(3, 1, 300)]))
    targets = np.repeat([0, 1], [2000, 300])
    t = sensitivity_threshold(probs, targets, sensitivity=0.99, min_specificity=0.9)
    recall, specificity = recall_specificity(probs, targets, t)
    assert recall >= 0.99 and specificity >= 0.9
    chosen, next_up = np.sort(probs[probs > t])[:2]  # t sits halfway below the cut
    assert t > probs[probs < chosen].max()  # same validate decisions as the cut itself
    assert recall_specificity(probs, targets, next_up)[0] < 0.99


def test_specificity_floor_wins_on_overlapping_classes() -> None:
    probs = np.concatenate([np.linspace(0.0, 0.8, 1000), np.linspace(0.2, 1.0, 100)])
    targets = np.repeat([0, 1], [1000, 100])
    t = sensitivity_threshold(probs, targets, sensitivity=0.99, min_specificity=0.9)
    recall, specificity = recall_specificity(probs, targets, t)
    assert specificity >= 0.9 and recall < 0.99
    next_down = probs[probs < t].max()  # the floor's threshold is the lowest that reaches it
    assert recall_specificity(probs, targets, next_down)[1] < 0.9


def test_no_positives_fall_back_to_one_half() -> None:
    probs, targets = np.linspace(0, 1, 20), np.zeros(20, int)
    assert f1_threshold(probs, targets) == 0.5
    assert sensitivity_threshold(probs, targets) == 0.5
    low, high = uncertain_band(probs, targets, 0.5)
    assert 0.0 <= low <= 0.5 <= high <= 1.0


def test_uncertain_band_brackets_the_threshold_and_the_overlap() -> None:
    probs = np.concatenate([np.linspace(0.0, 0.6, 500), np.linspace(0.4, 1.0, 500)])
    targets = np.repeat([0, 1], 500)
    low, high = uncertain_band(probs, targets, 0.5)
    assert low == pytest.approx(0.4)  # nothing below the first positive is uncertain
    assert low < 0.5 <= high and 0.58 <= high <= 0.6  # precision >= 0.98 just under 0.6
    low, high = uncertain_band(probs, targets, 0.5, sure_precision=1.0)
    assert low == pytest.approx(0.4) and high > 0.6  # the whole overlap [0.4, 0.6]
    assert targets[probs >= high].all()


def two_critical_labels(band: tuple[float, float] = (0.2, 0.8)) -> Calibration:
    return Calibration(("A", "B", "C"), (
        LabelCalibration(1.0, 0.5, True, band), LabelCalibration(1.0, 0.5, True, band),
        LabelCalibration(1.0, 0.5, False, None)))


def test_cap_review_rate_shrinks_bands_under_the_cap() -> None:
    calibration = two_critical_labels()
    probs = np.random.default_rng(2).random((1000, 3))
    rate = np.mean([bool(flags) for flags in calibration.uncertain(probs)])
    assert rate > 0.8
    capped = calibration.cap_review_rate(probs, max_rate=0.2)
    rate = np.mean([bool(flags) for flags in capped.uncertain(probs)])
    assert 0.15 < rate <= 0.2
    for fit in capped.per_label[:2]:
        assert fit.band is not None
        low, high = fit.band
        assert 0.2 < low < 0.5 < high < 0.8
        assert 0.5 - low == pytest.approx(high - 0.5)  # both sides scaled alike
    assert capped.per_label[2].band is None
    assert calibration.cap_review_rate(probs, max_rate=0.9) is calibration


def test_uncertain_and_decisions_per_study() -> None:
    calibration = two_critical_labels()
    probs = np.array([[0.1, 0.5, 0.9], [0.3, 0.85, 0.4]])
    assert calibration.uncertain(probs) == [["B"], ["A"]]
    assert calibration.decisions(probs).tolist() == [[False, True, True], [False, True, False]]
    assert calibration.uncertain(probs[0]) == [["B"]]


def validate_split(n: int = 800) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    targets = (rng.random((n, len(CHEXPERT_LABELS))) < 0.3).astype(np.int64)
    targets[:, CHEXPERT_LABELS.index("Fracture")] = 0  # a critical label never seen positive
    targets[:, CHEXPERT_LABELS.index("Pleural Other")] = 0
    logits = 4.0 * (targets - 0.5) + rng.normal(0.0, 2.0, targets.shape)
    return logits, targets


def test_fit_round_trips_through_json() -> None:
    logits, targets = validate_split()
    calibration = Calibration.fit(logits, targets)
    restored = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert restored == calibration
    probs = calibration.probabilities(logits)
    assert probs.dtype == np.float64 and probs.shape == logits.shape
    np.testing.assert_array_equal(restored.probabilities(logits), probs)
    np.testing.assert_array_equal(restored.decisions(probs), calibration.decisions(probs))
    assert restored.uncertain(probs) == calibration.uncertain(probs)
    assert np.mean([bool(flags) for flags in calibration.uncertain(probs)]) <= 0.2


def test_fit_handles_degenerate_labels_and_marks_critical_ones() -> None:
    logits, targets = validate_split()
    calibration = Calibration.fit(logits, targets)
    for name, fit in zip(calibration.labels, calibration.per_label, strict=True):
        assert fit.critical == (name in CRITICAL_LABELS)
        assert (fit.band is not None) == fit.critical
        if fit.band is not None:
            assert 0.0 <= fit.band[0] <= fit.threshold <= fit.band[1] <= 1.0
    fracture = calibration.per_label[CHEXPERT_LABELS.index("Fracture")]
    assert (fracture.temperature, fracture.threshold) == (1.0, 0.5)
    single = calibration.probabilities(logits[0])
    assert single.shape == (len(CHEXPERT_LABELS),)
    with pytest.raises(ValueError, match="expected shape"):
        calibration.probabilities(logits[:, :3])


def test_logits_from_probs_inverts_the_sigmoid() -> None:
    z = np.linspace(-10.0, 10.0, 41)
    np.testing.assert_allclose(logits_from_probs(expit(z)), z, atol=1e-6)
    assert np.isfinite(logits_from_probs(np.array([0.0, 1.0]))).all()


def test_study_confidence_is_the_joint_probability_of_the_decisions() -> None:
    probs = np.array([0.9, 0.2, 0.6])
    decisions = np.array([True, False, False])
    assert study_confidence(probs, decisions) == pytest.approx(0.9 * 0.8 * 0.4)
