"""OOD gate: Mahalanobis scorer on Gaussian data, AUROC, JSON round trip, OOD transforms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from radreport.eval.ood import OOD_TRANSFORMS, OODTransform, auroc, transform_by_name
from radreport.model.ood import MahalanobisScorer

DIM = 16


# --- Mahalanobis scorer ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def gaussian() -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a random correlated 16-D Gaussian."""
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(DIM, DIM))
    return rng.normal(size=DIM), mixing @ mixing.T + 0.1 * np.eye(DIM)


def sample(gaussian: tuple[np.ndarray, np.ndarray], n: int, seed: int) -> np.ndarray:
    mean, cov = gaussian
    return np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)


@pytest.fixture(scope="module")
def scorer(gaussian: tuple[np.ndarray, np.ndarray]) -> MahalanobisScorer:
    return MahalanobisScorer.fit(sample(gaussian, 2000, seed=1))


def test_in_distribution_distance_is_near_sqrt_dim(
    scorer: MahalanobisScorer, gaussian: tuple[np.ndarray, np.ndarray]
) -> None:
    scores = scorer.score(sample(gaussian, 1000, seed=2))
    assert scores.shape == (1000,)
    assert scores.dtype == np.float64
    # E[distance] = sqrt(2) Γ((C+1)/2) / Γ(C/2) ≈ 3.97 for C = 16, a little under sqrt(16)
    assert scores.mean() == pytest.approx(math.sqrt(DIM), rel=0.1)


def test_shifted_samples_score_far_higher(
    scorer: MahalanobisScorer, gaussian: tuple[np.ndarray, np.ndarray]
) -> None:
    inside = sample(gaussian, 500, seed=3)
    shifted = sample(gaussian, 500, seed=4)
    shifted[:, 0] += 5 * math.sqrt(gaussian[1][0, 0])  # 5 standard deviations along axis 0
    in_scores, out_scores = scorer.score(inside), scorer.score(shifted)
    assert np.median(out_scores) > 1.5 * np.median(in_scores)
    assert auroc(in_scores, out_scores) > 0.99


def test_threshold_flags_about_flag_rate(
    scorer: MahalanobisScorer, gaussian: tuple[np.ndarray, np.ndarray]
) -> None:
    assert not scorer.flags(sample(gaussian, 100, seed=5)).any()  # uncalibrated: inf
    calibrated = scorer.with_threshold(scorer.score(sample(gaussian, 2000, seed=6)), 0.05)
    assert math.isfinite(calibrated.threshold)
    assert calibrated.threshold != scorer.threshold  # a new scorer; the old one is unchanged
    flags = calibrated.flags(sample(gaussian, 4000, seed=7))
    assert flags.dtype == np.bool_
    assert 0.03 <= flags.mean() <= 0.07


def test_single_vector_scores_as_one_row(scorer: MahalanobisScorer) -> None:
    vector = np.zeros(DIM, dtype=np.float32)
    assert scorer.score(vector).shape == (1,)
    np.testing.assert_allclose(scorer.score(vector), scorer.score(vector[np.newaxis]))


def test_shrinkage_allows_fewer_rows_than_columns() -> None:
    features = np.random.default_rng(8).normal(size=(10, 32))
    scorer = MahalanobisScorer.fit(features)
    scores = scorer.score(np.random.default_rng(9).normal(size=(5, 32)))
    assert np.all(np.isfinite(scores))
    assert np.all(np.isfinite(MahalanobisScorer.fit(features, shrinkage=0.5).score(features)))


def test_fixed_shrinkage_one_is_scaled_identity() -> None:
    features = np.random.default_rng(10).normal(size=(50, 4))
    scorer = MahalanobisScorer.fit(features, shrinkage=3.0)  # clipped to 1
    variance = features.var(axis=0).mean()
    np.testing.assert_allclose(scorer.precision, np.eye(4) / variance)


@pytest.mark.parametrize(
    "features, match",
    [
        (np.ones((1, 4)), "at least 2"),
        (np.ones(4), "2-D"),
        (np.ones((2, 2, 2)), "2-D"),
        (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), "NaN"),
        (np.ones((5, 3)), "zero variance"),
    ],
)
def test_fit_rejects_bad_features(features: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MahalanobisScorer.fit(features)


def test_score_rejects_wrong_width(scorer: MahalanobisScorer) -> None:
    with pytest.raises(ValueError, match="expected 16 features"):
        scorer.score(np.zeros((2, DIM + 1)))


def test_dict_round_trip_through_json(
    scorer: MahalanobisScorer, gaussian: tuple[np.ndarray, np.ndarray]
) -> None:
    features = sample(gaussian, 50, seed=11)
    for original in (scorer, scorer.with_threshold(scorer.score(features), 0.1)):
        text = json.dumps(original.to_dict(), allow_nan=False)  # strict JSON: no Infinity
        restored = MahalanobisScorer.from_dict(json.loads(text))
        np.testing.assert_array_equal(restored.score(features), original.score(features))
        assert restored.threshold == original.threshold


# --- AUROC ----------------------------------------------------------------------------------

def test_auroc_extremes_and_ties() -> None:
    low, high = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6])
    assert auroc(low, high) == 1.0
    assert auroc(high, low) == 0.0
    assert auroc(np.full(4, 2.0), np.full(3, 2.0)) == 0.5
    assert auroc(np.array([1.0, 2.0]), np.array([2.0, 3.0])) == pytest.approx(7 / 8)


def test_auroc_of_identical_distributions_is_near_half() -> None:
    rng = np.random.default_rng(12)
    assert auroc(rng.normal(size=2000), rng.normal(size=2000)) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("in_scores, out_scores", [([], [1.0]), ([1.0], []), ([], [])])
def test_auroc_rejects_empty(in_scores: list[float], out_scores: list[float]) -> None:
    with pytest.raises(ValueError, match="at least one"):
        auroc(np.array(in_scores), np.array(out_scores))


# --- transforms -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A smooth 64 x 64 image: a diagonal ramp with a bright disk off centre.

    Asymmetric on purpose, so that rotating or flipping it changes it.
    """
    rows, cols = np.mgrid[0:64, 0:64] / 63.0
    out = 0.15 + 0.45 * (0.7 * cols + 0.3 * rows)
    out[(rows - 0.3) ** 2 + (cols - 0.65) ** 2 < 0.15**2] = 0.95
    return ndimage.gaussian_filter(out, 1.5).astype(np.float32)


def test_transform_names_are_unique_and_both_kinds_present() -> None:
    names = [t.name for t in OOD_TRANSFORMS]
    assert len(names) == len(set(names))
    assert {t.kind for t in OOD_TRANSFORMS} == {"far", "near"}
    assert all(t.description for t in OOD_TRANSFORMS)


@pytest.mark.parametrize("transform", OOD_TRANSFORMS, ids=lambda t: t.name)
def test_transform_output_contract(transform: OODTransform, image: np.ndarray) -> None:
    out = transform.apply(image, np.random.default_rng(0))
    assert out.dtype == np.float32
    assert out.shape == image.shape  # square input, so rotated_90 keeps it too
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0
    again = transform.apply(image, np.random.default_rng(0))
    np.testing.assert_array_equal(out, again)


@pytest.mark.parametrize(
    "transform", [t for t in OOD_TRANSFORMS if t.kind == "far"], ids=lambda t: t.name)
def test_far_transforms_change_the_image(transform: OODTransform, image: np.ndarray) -> None:
    # Every far transform is checked. noise, blank_gradient, non_chest and checkerboard ignore
    # the input's content, so for them this only guards against returning the input;
    # rotated_90 and upside_down would leave a symmetric image unchanged, hence the
    # asymmetric test image.
    out = transform.apply(image, np.random.default_rng(0))
    assert np.abs(out - image).mean() > 0.05


def test_non_chest_keeps_the_input_histogram(image: np.ndarray) -> None:
    out = transform_by_name("non_chest").apply(image, np.random.default_rng(1))
    np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(image, axis=None))


def test_rotated_90_of_a_non_square_image_swaps_the_shape() -> None:
    out = transform_by_name("rotated_90").apply(np.zeros((8, 12)), np.random.default_rng(0))
    assert out.shape == (12, 8)


def test_cropped_zoom_keeps_odd_shapes() -> None:
    tall = np.random.default_rng(13).random((37, 23)).astype(np.float32)
    assert transform_by_name("cropped_zoom").apply(tall, np.random.default_rng(0)).shape == (37, 23)


def test_transform_by_name() -> None:
    assert transform_by_name("inverted").kind == "far"
    assert transform_by_name("rotation_10deg").kind == "near"
    with pytest.raises(ValueError, match="valid names: inverted"):
        transform_by_name("sideways")
