"""PNG and JPEG pixels as the model sees them: one decode rule for serving and training.

Serving (``services.preprocess.imaging``) and training on real datasets
(``radreport.model.images``) both read a picture through Pillow, upright per its EXIF
orientation; 16-bit grayscale is scaled by 65535, anything else converted to 8-bit
grayscale and scaled by 255. Keeping that rule here means a model meets the same pixels in
training and in service. NumPy and Pillow only.
"""

from __future__ import annotations

import struct

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})
# What Pillow raises on a file it cannot decode (DecompressionBombError aside: too large).
DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError,
                                                  struct.error, EOFError)


def grayscale_pixels(upright: Image.Image) -> tuple[np.ndarray, int]:
    """(H, W) float32 in [0, 1] of a loaded, upright picture, and its bits (16 or 8)."""
    if upright.mode in SIXTEEN_BIT_MODES:
        return np.asarray(upright, dtype=np.float32) / 65535.0, 16
    return np.asarray(upright.convert("L"), dtype=np.float32) / 255.0, 8
