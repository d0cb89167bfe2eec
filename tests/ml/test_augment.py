"""SimCLR augmentations: shapes, seeding, crop boxes."""

from __future__ import annotations

import numpy as np
import pytest

from nmid_desktop.ml.augment import AugmentConfig, random_crop_box, random_view, two_views


def _image(h: int = 180, w: int = 260) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(h, w), dtype=np.uint8)


def test_view_shape_and_dtype() -> None:
    view = random_view(_image(), np.random.default_rng(0), AugmentConfig(output_size=96))
    assert view.shape == (96, 96) and view.dtype == np.uint8 and view.flags.c_contiguous


def test_seeded_views_repeat_and_differ() -> None:
    image = _image()
    a1, a2 = two_views(image, np.random.default_rng(3))
    b1, b2 = two_views(image, np.random.default_rng(3))
    c1, _ = two_views(image, np.random.default_rng(4))
    assert np.array_equal(a1, b1) and np.array_equal(a2, b2)
    assert not np.array_equal(a1, a2)
    assert not np.array_equal(a1, c1)


def test_crop_boxes_stay_inside_and_respect_scale() -> None:
    rng = np.random.default_rng(0)
    cfg = AugmentConfig()
    for h, w in [(200, 200), (50, 400), (37, 41)]:
        for _ in range(200):
            x0, y0, x1, y1 = random_crop_box(h, w, rng, cfg)
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            if (h, w) == (200, 200):
                assert 0.15 <= (x1 - x0) * (y1 - y0) / (h * w) <= 1.0


def test_small_and_flat_images_work() -> None:
    flat = np.full((20, 30), 128, dtype=np.uint8)
    view = random_view(flat, np.random.default_rng(1), AugmentConfig(output_size=32, noise_p=0.0))
    assert view.shape == (32, 32)
    # without noise a flat image stays flat whatever the jitter did
    assert view.min() == view.max()


def test_non_uint8_is_refused() -> None:
    with pytest.raises(ValueError):
        random_view(np.zeros((10, 10), dtype=np.float32), np.random.default_rng(0))
