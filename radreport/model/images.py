"""Image files as the model sees them in training, decoded the way serving decodes them.

Serving (``services.preprocess.imaging``) reads a PNG or JPEG by the rule of
``radreport.data.pictures`` (upright, 16-bit grayscale scaled by 65535, anything else 8-bit
grayscale scaled by 255), then letterboxes it into the model's square
(``report.to_model_input``). Training on real datasets reads its files by the same rule, so
a model meets the same pixels in training and in service (``letterbox`` is that square,
computed with torch, five times faster on a full-size radiograph).

Also here: the geometric augmentation for real datasets (small rotation, scale and
shift). It never flips: laterality is part of what the report states.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

from radreport.data.pictures import DECODE_ERRORS, grayscale_pixels

UNREADABLE: tuple[type[BaseException], ...] = (*DECODE_ERRORS, Image.DecompressionBombError)


class UnreadableImage(Exception):
    """An image file that cannot be decoded; ``reason`` never holds the path."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_image(path: str) -> np.ndarray:
    """(H, W) float32 in [0, 1] from a PNG or JPEG file; ``UnreadableImage`` otherwise."""
    try:
        with Image.open(path) as image:
            image.load()
            pixels, _ = grayscale_pixels(ImageOps.exif_transpose(image))
    except FileNotFoundError as err:
        raise UnreadableImage("missing file") from err
    except UNREADABLE as err:
        raise UnreadableImage(f"cannot decode: {type(err).__name__}") from err
    if pixels.ndim != 2 or pixels.size == 0:
        raise UnreadableImage(f"not a 2-D image: shape {pixels.shape}")
    return np.clip(pixels, 0.0, 1.0)


def read_model_image(path: str, size: int) -> np.ndarray:
    """(size, size) float32: the file letterboxed into the model's square, as served."""
    return letterbox(read_image(path), size)


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """``report.to_model_input``'s square (same geometry, same area means to 1e-6), resized
    by torch: on a 2544 x 3056 radiograph 18 ms against NumPy's 93 ms on one core, which is
    most of what a worker spends per image after the JPEG decode (about 60 ms)."""
    height, width = image.shape
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pixels = image
    if (new_h, new_w) != (height, width):
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        pixels = F.interpolate(x, size=(new_h, new_w), mode="area")[0, 0].numpy()
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = pixels
    return canvas


def augment_geometry(image: Tensor, strength: float, rng: np.random.Generator) -> Tensor:
    """A random small rotation (up to 10 degrees x strength), scale (1 +- 0.1 x strength)
    and shift (up to 5% of the side x strength) of a (1, H, W) image, zero filled.

    The matrix is a rotation times a positive scale, so its determinant is positive:
    never a mirror image.
    """
    if strength <= 0:
        return image
    angle = math.radians(rng.uniform(-10.0, 10.0) * strength)
    scale = 1.0 + rng.uniform(-0.1, 0.1) * strength
    shift = rng.uniform(-0.1, 0.1, size=2) * strength  # grid units: the side is 2
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[[cos, -sin, shift[0]], [sin, cos, shift[1]]]], dtype=torch.float32)
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]
