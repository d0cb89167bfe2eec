"""Demo options for the harder-image proxies: non-square frames, fine structure, imbalanced counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nmid_desktop.core.demo import DEMO_CLASSES, generate_custom_demo, generate_demo, make_demo_image
from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.jobs import run_job


def test_default_arguments_draw_the_same_image_as_before() -> None:
    # The new options default to today's drawing: same rng draws, same pixels.
    a, box_a = make_demo_image("fibres", np.random.default_rng([0, 4, 1]), size=96)
    b, box_b = make_demo_image("fibres", np.random.default_rng([0, 4, 1]), size=96, height=None, fine=False)
    assert box_a == box_b and np.array_equal(a, b)


@pytest.mark.parametrize("cls", DEMO_CLASSES)
def test_non_square_frame_and_box(cls: str) -> None:
    image, (x0, y0, x1, y1) = make_demo_image(cls, np.random.default_rng(1), size=160, with_bar=True, height=120)
    assert image.shape == (120, 160)
    assert (x0, y0, x1) == (0, 0, 160) and 95 <= y1 < 112  # bar height is 9-16 % of the height
    assert image[:y1].std() > 5


@pytest.mark.parametrize("cls", ["particles", "porous", "fibres"])
def test_fine_keeps_features_small_in_a_large_frame(cls: str) -> None:
    # Fine structure decorrelates over fewer pixels: at fine=True a 512 px frame holds the
    # 256 px feature sizes, while the scaled drawing of the same seed doubles them.
    def correlation_at_8_px(fine: bool) -> float:
        image, (_, _, _, y1) = make_demo_image(
            cls, np.random.default_rng(5), size=512, height=384, with_bar=False, fine=fine
        )
        x = ndimage.gaussian_filter(image[:y1].astype(np.float32), 2)  # shot noise off
        x -= x.mean()
        return float((x[:, 8:] * x[:, :-8]).mean() / x.var())

    assert correlation_at_8_px(True) < correlation_at_8_px(False) - 0.1


def test_counts_give_an_imbalanced_library(tmp_path: Path) -> None:
    written = run_job(generate_custom_demo(tmp_path, (3, 1, 1, 2, 1), seed=2, size=64))
    per_class = {c: sum(label == c for _, label in written) for c in DEMO_CLASSES}
    assert list(per_class.values()) == [3, 1, 1, 2, 1]
    # Image i of a class is the same file whatever the counts (own generator per image).
    again = run_job(generate_demo(tmp_path / "b", per_class=1, seed=2, size=64))
    assert again[0][0].read_bytes() == written[0][0].read_bytes()


def test_bad_counts_and_height() -> None:
    with pytest.raises(NmidError, match="counts"):
        next(generate_custom_demo(Path("unused"), (1, 2)))
    with pytest.raises(NmidError, match="counts"):
        next(generate_custom_demo(Path("unused"), (1, 0, 1, 1, 1)))
    with pytest.raises(NmidError, match="at least 64"):
        make_demo_image("porous", np.random.default_rng(0), size=128, height=40)
