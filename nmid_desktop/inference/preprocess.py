"""Encoder pre-processing in numpy and Pillow: resize, normalise, symmetric views.

These are the only implementations: the torch encoder (``ml.encoders``) resizes with
:func:`resize_square` too, and its normalisation is the same float32 arithmetic, so both
engines see the same network input to the last bit (checked in ``tests/ml``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

# Encoder name suffix -> number of views.
VIEW_SETS = {"flip": 2, "flips": 4, "d4": 8}


def as_grey_uint8(image: np.ndarray) -> np.ndarray:
    """Check an input image: 2-D uint8 (an ``(H, W, 1)`` array is squeezed).

    Raises:
        ValueError: For other shapes or dtypes (callers pass ``core.images.model_input`` output).
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2 or array.dtype != np.uint8 or min(array.shape) < 1:
        raise ValueError(f"encoders take 2-D uint8 grey images, not {array.dtype} of shape {array.shape}")
    return array


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to ``(size, size)`` (the whole field of view, aspect squashed).

    Pillow's bilinear filter widens its support when shrinking, so large SEM frames are
    antialiased rather than aliased; ``reducing_gap`` makes big reductions fast.
    """
    if image.shape == (size, size):
        return np.ascontiguousarray(image)
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8)


def normalise(batch: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Scale grey uint8 images for a network, replicating grey to ``C = len(mean)`` channels.

    Computes ``x * (1 / (255 std)) + (-mean / std)`` in float32, the same fused
    multiply-add the torch path does with ``torch.addcmul``.

    Shape: ``(B, S, S)`` uint8 -> ``(B, C, S, S)`` float32, C-contiguous.
    """
    x = np.asarray(batch)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise ValueError(f"normalise takes a (B, S, S) uint8 batch, not {x.dtype} of shape {x.shape}")
    std32 = np.asarray(std, dtype=np.float32)
    scale = (np.float32(1.0) / (np.float32(255.0) * std32)).reshape(1, -1, 1, 1)  # (1, C, 1, 1)
    shift = (-np.asarray(mean, dtype=np.float32) / std32).reshape(1, -1, 1, 1)
    out = np.empty((x.shape[0], len(std32), x.shape[1], x.shape[2]), dtype=np.float32)
    np.multiply(x[:, None].astype(np.float32), scale, out=out)
    out += shift
    return out


def symmetric_views(batch: np.ndarray, views: str) -> np.ndarray:
    """Stack the flipped and rotated views of a batch, view-major.

    ``flip``: identity, horizontal flip; ``flips``: also the vertical flip and both;
    ``d4``: the 4 rotations by 90 degrees (counter-clockwise, as ``torch.rot90``), then
    each of them mirrored left-right.

    Shape: ``(B, S, S)`` -> ``(V * B, S, S)``, rows ``v * B + i`` hold view ``v`` of image ``i``.
    """
    x = np.asarray(batch)
    if views not in VIEW_SETS:
        raise ValueError(f"view set must be one of {', '.join(VIEW_SETS)}, not {views!r}")
    if views == "flip":
        stack = [x, x[:, :, ::-1]]
    elif views == "flips":
        stack = [x, x[:, :, ::-1], x[:, ::-1, :], x[:, ::-1, ::-1]]
    else:
        rotations = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
        stack = rotations + [r[:, :, ::-1] for r in rotations]
    return np.ascontiguousarray(np.concatenate(stack))


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (as ``torch.nn.functional.normalize``, eps 1e-12).

    Shape: ``(B, D)`` -> ``(B, D)`` float32.
    """
    f = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    return (f / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)
