"""Testing the out-of-distribution gate (``radreport.model.ood``): AUROC and OOD test images.

``OOD_TRANSFORMS`` is the committed list of image transforms that make OOD test images from
in-distribution ones, so the gate's AUROC is reported per transform:

* ``far``: the result is not a chest radiograph as the model knows it (inverted
  MONOCHROME1 slip, rotated or upside-down film, noise, a blank ramp, a non-chest body part,
  a test pattern). The gate must flag these; the goal is AUROC >= 0.99 for each.
* ``near``: plausible acquisition differences (slight rotation, contrast or detector tone
  curve, blur, tighter collimation). No AUROC goal: they are reported per transform so
  it is known how sensitive the gate is to them, not to pass or fail it.

Images are float32 (H, W) in [0, 1], bone bright (1 = most attenuating). Every transform
returns float32 in [0, 1], the input's shape unless its description says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from scipy import ndimage, stats

from radreport.model.report import ReportGenerator, to_model_input


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve with OOD as the positive class and higher score = more OOD.

    Mann-Whitney U / (n_in * n_out): the chance that a random OOD image outscores a random
    in-distribution one, ties counted as half.
    """
    neg = np.asarray(in_scores, dtype=np.float64).ravel()
    pos = np.asarray(out_scores, dtype=np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        raise ValueError("auroc needs at least one in-distribution and one OOD score")
    if np.isnan(neg).any() or np.isnan(pos).any():
        raise ValueError("auroc scores must not be NaN")
    ranks = stats.rankdata(np.concatenate([neg, pos]))  # average ranks: ties count half
    u_stat = float(ranks[neg.size:].sum()) - pos.size * (pos.size + 1) / 2.0
    return u_stat / (neg.size * pos.size)


# --- OOD transforms -------------------------------------------------------------------------

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class OODTransform:
    """A named way to turn an in-distribution image into an OOD test image."""

    name: str
    kind: Literal["far", "near"]
    description: str
    apply: Transform


def _as_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {array.shape}")
    return array


def _finish(array: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: the contract of every transform."""
    return np.clip(np.nan_to_num(array), 0.0, 1.0).astype(np.float32)


def _normalize(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def _grid(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates scaled to [0, 1]."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    return rows / max(shape[0] - 1, 1), cols / max(shape[1] - 1, 1)


def _inverted(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _finish(1.0 - _as_image(image))


def _rotated_90(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _finish(np.rot90(_as_image(image)))


def _upside_down(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _finish(np.flipud(_as_image(image)))


def _noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _finish(rng.uniform(0.0, 1.0, size=_as_image(image).shape))


def _blank_gradient(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shape = _as_image(image).shape
    rows, cols = _grid(shape)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = _normalize(np.cos(angle) * cols + np.sin(angle) * rows)
    low, high = rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0)
    return _finish(low + (high - low) * ramp + rng.normal(0.0, 0.01, size=shape))


def _ellipse(
    rows: np.ndarray, cols: np.ndarray, center: tuple[float, float],
    axes: tuple[float, float], angle: float,
) -> np.ndarray:
    """Boolean mask of an ellipse in the [0, 1] coordinates of ``_grid``."""
    dr, dc = rows - center[0], cols - center[1]
    along = dc * np.cos(angle) + dr * np.sin(angle)
    across = -dc * np.sin(angle) + dr * np.cos(angle)
    mask: np.ndarray = (along / axes[0]) ** 2 + (across / axes[1]) ** 2 <= 1.0
    return mask


def _limb(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A forearm-like phantom: soft tissue around two long bones, on a dark background."""
    rows, cols = _grid(shape)
    angle = rng.uniform(0.0, np.pi)
    center = (0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05))
    out = np.full(shape, 0.05)
    out[_ellipse(rows, cols, center, (0.45, 0.16), angle)] = 0.4
    for offset in (-0.06, 0.06):  # two parallel bones, like radius and ulna
        bone_center = (center[0] + offset * np.cos(angle), center[1] - offset * np.sin(angle))
        out[_ellipse(rows, cols, bone_center, (0.38, 0.035), angle)] = 0.9
    for _ in range(3):  # a few soft blobs so the layout is not too regular
        blob = (rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8))
        out[_ellipse(rows, cols, blob, (0.06, 0.04), rng.uniform(0.0, np.pi))] += 0.1
    out = ndimage.gaussian_filter(out, 0.01 * max(shape))
    # smooth (not per-pixel) variation: it orders the pixels of each flat region, so the
    # rank-matched image in ``_non_chest`` is smooth there rather than speckled
    shading = ndimage.gaussian_filter(rng.normal(size=shape), 0.1 * max(shape))
    return out + 0.03 * _normalize(shading)


def _non_chest(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A limb phantom given exactly the input's intensity histogram, by rank matching.

    It stands in for a non-chest radiograph sent with a chest header: the same grey levels as
    the chest, so the gate cannot pass it on intensity statistics, but no chest anatomy.
    """
    array = _as_image(image)
    limb = _limb(array.shape, rng)
    out = np.empty(array.size)
    out[np.argsort(limb, axis=None, kind="stable")] = np.sort(array, axis=None)
    return _finish(out.reshape(array.shape))


def _checkerboard(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A calibration phantom: checkerboard with a step wedge across the top eighth."""
    shape = _as_image(image).shape
    square = max(2, min(shape) // 8)
    grid = np.indices(shape)
    rows, cols = grid[0], grid[1]
    phase = int(rng.integers(0, 2))
    out = np.where((rows // square + cols // square + phase) % 2 == 0, 0.15, 0.85)
    band = max(1, shape[0] // 8)
    out[:band] = np.floor(cols[:band] / shape[1] * 10) / 9  # 10 steps, 0 to 1
    return _finish(out + rng.normal(0.0, 0.01, size=shape))


def _rotation_10deg(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rotated = ndimage.rotate(_as_image(image), 10.0, reshape=False, order=1, cval=0.0)
    return _finish(rotated)


def _contrast_shift(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _finish(np.clip(_as_image(image), 0.0, 1.0) ** 0.6 + 0.1)


def _sigmoid(array: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-8.0 * (array - 0.5)))


def _detector_curve(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    low, high = _sigmoid(np.array([0.0, 1.0]))
    return _finish((_sigmoid(_as_image(image)) - low) / (high - low))


def _downsampled_blurry(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _finish(ndimage.gaussian_filter(_as_image(image), sigma=3.0, mode="nearest"))


def _fit_shape(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Crop, or pad with edge values, to exactly ``shape`` (zoom rounds sizes)."""
    array = array[: shape[0], : shape[1]]
    pad = [(0, shape[0] - array.shape[0]), (0, shape[1] - array.shape[1])]
    return np.pad(array, pad, mode="edge")


def _cropped_zoom(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    array = _as_image(image)
    height, width = array.shape
    crop_h, crop_w = max(1, round(0.7 * height)), max(1, round(0.7 * width))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = array[top: top + crop_h, left: left + crop_w]
    zoomed = ndimage.zoom(crop, (height / crop_h, width / crop_w), order=1)
    return _finish(_fit_shape(zoomed, array.shape))


OOD_TRANSFORMS: Final[tuple[OODTransform, ...]] = (
    OODTransform("inverted", "far", "1 - image: a MONOCHROME1 image shown as MONOCHROME2",
                 _inverted),
    OODTransform("rotated_90", "far",
                 "rotated 90 degrees counter-clockwise (np.rot90); shape becomes (W, H)",
                 _rotated_90),
    OODTransform("upside_down", "far", "flipped vertically: film loaded upside down",
                 _upside_down),
    OODTransform("noise", "far", "uniform noise in [0, 1]; only the input's shape is used",
                 _noise),
    OODTransform("blank_gradient", "far",
                 "a smooth ramp in a random direction plus tiny noise: no anatomy",
                 _blank_gradient),
    OODTransform("non_chest", "far",
                 "a synthetic limb (two long bones in soft tissue) with the input's intensity "
                 "histogram: a non-chest radiograph carrying a chest header", _non_chest),
    OODTransform("checkerboard", "far", "a checkerboard test pattern with a step wedge",
                 _checkerboard),
    OODTransform("rotation_10deg", "near", "rotated 10 degrees in plane, corners filled with 0",
                 _rotation_10deg),
    OODTransform("contrast_shift", "near", "gamma 0.6 plus a 0.1 offset, clipped",
                 _contrast_shift),
    OODTransform("detector_curve", "near",
                 "a sigmoid detector tone curve 1 / (1 + exp(-8 (x - 0.5))), renormalized",
                 _detector_curve),
    OODTransform("downsampled_blurry", "near",
                 "gaussian blur, sigma 3 px: a low-resolution image upscaled", _downsampled_blurry),
    OODTransform("cropped_zoom", "near",
                 "the central 70% zoomed back to full size: tighter collimation", _cropped_zoom),
)


def transform_by_name(name: str) -> OODTransform:
    """The committed transform called ``name``."""
    for transform in OOD_TRANSFORMS:
        if transform.name == name:
            return transform
    valid = ", ".join(t.name for t in OOD_TRANSFORMS)
    raise ValueError(f"unknown OOD transform {name!r}; valid names: {valid}")


# --- evaluation -----------------------------------------------------------------------------

@dataclass(frozen=True)
class TransformResult:
    name: str
    kind: str
    auroc: float  # in-distribution test images against their transformed copies
    flag_rate: float  # transformed images the gate flags


def gate_scores(generator: ReportGenerator, images: Sequence[np.ndarray],
                batch_size: int = 32) -> np.ndarray:
    """The OOD score of each image, through the served encoder and the folder's scorer."""
    scorer = generator.safety_net.ood
    if scorer is None:
        raise ValueError("this model folder has no OOD gate (no calibration.json with 'ood')")
    scores: list[np.ndarray] = []
    size = generator.info.image_size
    for start in range(0, len(images), batch_size):
        batch = np.stack([to_model_input(image, size)[0]
                          for image in images[start : start + batch_size]])[:, None]
        features = generator.onnx.encode(batch).features
        if features is None:
            raise ValueError("this model's encoder has no 'features' output")
        scores.append(scorer.score(features))
    return np.concatenate(scores)


def evaluate_transforms(generator: ReportGenerator, images: Sequence[np.ndarray],
                        transforms: Sequence[OODTransform] = OOD_TRANSFORMS,
                        seed: int = 0) -> tuple[np.ndarray, list[TransformResult]]:
    """In-distribution scores and, per transform, AUROC and flag rate of its images."""
    inside = gate_scores(generator, images)
    threshold = generator.safety_net.ood.threshold if generator.safety_net.ood else np.inf
    results = []
    for t in transforms:
        rng = np.random.default_rng(seed)
        outside = gate_scores(generator, [t.apply(image, rng) for image in images])
        results.append(TransformResult(t.name, t.kind, auroc(inside, outside),
                                       float(np.mean(outside > threshold))))
    return inside, results
