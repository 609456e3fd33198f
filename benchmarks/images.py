"""The benchmarks' images: seeded random RGB pixels, so runs need no dataset."""

from __future__ import annotations

import numpy as np
from PIL import Image


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """The same pixels for the same (width, height, seed), in every run."""
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)
