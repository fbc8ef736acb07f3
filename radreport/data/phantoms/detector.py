"""From attenuation to a displayed radiograph: exposure, detector response, blur and noise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from radreport.data.phantoms.canvas import soften


@dataclass(frozen=True)
class Exposure:
    """Per-study acquisition: how hard the beam, how the detector and its processing respond."""

    gain: float  # attenuation to optical density
    gamma: float  # detector / processing curve
    noise: float  # quantum noise at mid-grey
    blur_px: float  # detector unsharpness
    lift: float  # offset of the processed image
    grain: float  # low-frequency non-uniformity (scatter, heel effect)


def sample_exposure(rng: np.random.Generator) -> Exposure:
    return Exposure(
        gain=rng.uniform(1.4, 1.9),
        gamma=rng.uniform(0.8, 1.25),
        noise=rng.uniform(0.008, 0.03),
        blur_px=rng.uniform(0.7, 1.2),
        lift=rng.uniform(-0.03, 0.04),
        grain=rng.uniform(0.0, 0.03),
    )


def expose(rng: np.random.Generator, attenuation: np.ndarray, exposure: Exposure,
           scale: float) -> np.ndarray:
    """Map attenuation to a [0, 1] MONOCHROME2 image (bright = attenuating).

    ``scale`` is the image size over 512 so blur and noise grain look alike at every size.
    """
    signal = np.clip(attenuation, 0.0, None)
    signal *= -exposure.gain
    np.exp(signal, out=signal)
    signal = (1.0 - signal) / (1.0 - math.exp(-exposure.gain * 1.05))
    np.power(signal, exposure.gamma, out=signal)
    signal = soften(signal, exposure.blur_px * scale)
    size = attenuation.shape[0]
    quantum = rng.standard_normal(attenuation.shape, dtype=np.float32)
    if scale > 1.5:  # keep grain size constant in anatomy units
        quantum = soften(quantum, 0.5 * scale) * scale**0.5
    noise = exposure.noise * np.sqrt(np.clip(1.0 - signal, 0.05, 1.0)) * quantum
    heel = np.linspace(exposure.grain, -exposure.grain, size, dtype=np.float32)[None, :]
    image = signal + noise + heel + exposure.lift
    return np.clip(image, 0.0, 1.0).astype(np.float32)
