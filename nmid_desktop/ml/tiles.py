"""Tiles of a large micrograph, so that fine structure reaches the network nearer its native scale.

A 1280 x 960 SEM frame shrunk to the network's 224 px loses features a few pixels wide.
The crops of a ``grid x grid`` tiling are shrunk ~``grid`` times less. Small images (under
twice the network input on their shorter side, e.g. NEU's 200 px) get no tiles.
No torch here: numpy slicing only.
"""

from __future__ import annotations

import numpy as np

from nmid_desktop.core.errors import ConfigError
from nmid_desktop.inference.preprocess import as_grey_uint8

__all__ = ["tile_grid"]


def tile_grid(image: np.ndarray, input_size: int, grid: int) -> list[np.ndarray]:
    """The ``grid x grid`` equal tiles of an image, row-major, or none for a small image.

    Args:
        image: 2-D uint8 grey micrograph (already cropped to the micrograph proper).
        input_size: Side of the network input ``S``.
        grid: Tiles per side (at least 2).

    Returns:
        ``grid**2`` views of shape about ``(H / grid, W / grid)``, or ``[]`` when the shorter
        side is under ``2 * S`` (tiles would be upsampled rather than shrunk less).

    Raises:
        ConfigError: ``grid`` below 2.
    """
    if grid < 2:
        raise ConfigError(f"a tile grid needs at least 2 tiles per side, not {grid}")
    x = as_grey_uint8(image)
    h, w = x.shape
    if min(h, w) < 2 * input_size:
        return []
    rows = np.linspace(0, h, grid + 1).round().astype(int)
    cols = np.linspace(0, w, grid + 1).round().astype(int)
    return [x[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] for i in range(grid) for j in range(grid)]
