"""Shared constants and helpers of the multimodal-model tests (a uniquely named module, not ``conftest``)."""

from __future__ import annotations

import numpy as np

SECRET = "sk-test-SECRET-key-0123456789abcdef"

PRICES_TOML = """
[chat."vision-1"]
input_per_1m = 1.0
output_per_1m = 4.0
image_tokens = "tiles"
tile_base = 85
tile_tokens = 170

[chat."text-1"]
input_per_1m = 0.5
output_per_1m = 2.0

[image."image-1"]
input_per_1m = 0.0
per_image = { default = 0.05, low = 0.01 }
"""


def grey(size: tuple[int, int] = (64, 48), seed: int = 0) -> np.ndarray:
    """A (H, W) uint8 test image. ``size`` is (width, height)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
