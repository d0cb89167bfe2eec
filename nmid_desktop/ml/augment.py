"""Micrograph augmentations for SimCLR views, on 2-D uint8 grey arrays, seeded.

SimCLR (Chen et al. 2020, arXiv:2002.05709) learns from two random views of each
image; which invariances the views teach is the whole method. For micrographs:

* random resized crop (scale 0.2-1, aspect 3/4-4/3): a structure is the same at another
  place and a moderately different magnification;
* horizontal/vertical flips and 90-degree rotations: a sample has no up or down
  (the data bar is already cropped away, so nothing text-like is rotated);
* brightness and contrast jitter: detector gain, beam current and brightness settings
  differ between sessions;
* Gaussian blur: focus and astigmatism;
* Gaussian noise: dwell time / shot noise.

Colour jitter and greyscale conversion (the SimCLR ImageNet recipe) are pointless on
grey images and left out. Every view is a pure function of the image and the
``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the augmentations.

    Attributes:
        output_size: Side of the square view.
        scale: Range of the crop's area as a fraction of the image.
        ratio: Range of the crop's aspect ratio (width / height).
        flip_p: Probability of each flip (horizontal, vertical).
        rotate90: Rotate by a random multiple of 90 degrees.
        brightness: Additive shift up to this fraction of the full range.
        contrast: Contrast factor drawn from ``[1 - contrast, 1 + contrast]``.
        jitter_p: Probability of applying brightness/contrast jitter.
        blur_p: Probability of a Gaussian blur.
        blur_sigma: Range of the blur's sigma in output pixels.
        noise_p: Probability of additive Gaussian noise.
        noise_std: Range of the noise's standard deviation (fraction of full range).
    """

    output_size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    rotate90: bool = True
    brightness: float = 0.3
    contrast: float = 0.4
    jitter_p: float = 0.8
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_p: float = 0.5
    noise_std: tuple[float, float] = (0.0, 0.05)


def random_crop_box(height: int, width: int, rng: np.random.Generator, cfg: AugmentConfig) -> tuple[int, int, int, int]:
    """A random ``(x0, y0, x1, y1)`` box inside the image, as in torchvision's RandomResizedCrop.

    Falls back to the largest central crop of allowed aspect after 10 failed draws.
    """
    area = height * width
    log_ratio = (math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(cfg.scale[0], cfg.scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            return x0, y0, x0 + w, y0 + h
    aspect = width / height
    if aspect < cfg.ratio[0]:
        w, h = width, int(round(width / cfg.ratio[0]))
    elif aspect > cfg.ratio[1]:
        h, w = height, int(round(height * cfg.ratio[1]))
    else:
        w, h = width, height
    x0, y0 = (width - w) // 2, (height - h) // 2
    return x0, y0, x0 + w, y0 + h


def random_view(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig | None = None) -> np.ndarray:
    """One augmented view.

    Args:
        image: 2-D uint8 grey image of any size.
        rng: The random source; the view is a pure function of ``image`` and its state.
        cfg: Augmentation strengths.

    Returns:
        ``(S, S)`` uint8 with ``S = cfg.output_size``.
    """
    cfg = cfg or AugmentConfig()
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"augmentations take 2-D uint8 images, not {image.dtype} {image.shape}")
    size = cfg.output_size
    box = random_crop_box(image.shape[0], image.shape[1], rng, cfg)
    # Pillow crops and resizes in one pass (box=), antialiasing when it shrinks.
    view = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    if rng.random() < cfg.blur_p:
        view = view.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*cfg.blur_sigma))))
    out = np.asarray(view, dtype=np.uint8)
    if rng.random() < cfg.flip_p:
        out = out[:, ::-1]
    if rng.random() < cfg.flip_p:
        out = out[::-1, :]
    if cfg.rotate90:
        out = np.rot90(out, int(rng.integers(0, 4)))
    values = out.astype(np.float32)
    changed = False
    if rng.random() < cfg.jitter_p:
        factor = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        shift = rng.uniform(-cfg.brightness, cfg.brightness) * 255.0
        mean = float(values.mean())
        values = (values - mean) * factor + mean + shift
        changed = True
    if rng.random() < cfg.noise_p:
        sigma = rng.uniform(*cfg.noise_std) * 255.0
        values = values + rng.standard_normal(values.shape, dtype=np.float32) * np.float32(sigma)
        changed = True
    if not changed:
        return np.ascontiguousarray(out)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def two_views(
    image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The SimCLR positive pair: two independent views of one image, each ``(S, S)`` uint8."""
    return random_view(image, rng, cfg), random_view(image, rng, cfg)
