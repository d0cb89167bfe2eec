"""Data-bar detection: found under demo and foreign-style bars, never cut from images without one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from nmid_desktop.core.databar import DataBar, _detect, detect_data_bar, find_micrograph_box
from nmid_desktop.core.demo import DEMO_CLASSES, make_demo_image


def _neu_sample(neu_dir: Path, step: int) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("L")) for p in sorted(neu_dir.glob("*/*.jpg"))[::step]]


def _bar(width: int, height: int, background: int, ink: int, lines: list[str], separator: int | None = None) -> np.ndarray:
    """A bar in another style than the demo's: its own layout, left text block, scale bar right."""
    image = Image.new("L", (width, height), background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(9, height // 4))
    top = 2 if separator is None else 4
    if separator is not None:
        draw.rectangle([0, 0, width, 1], fill=separator)
    step = (height - top - 4) // len(lines)
    for i, text in enumerate(lines):
        draw.text((6, top + 2 + i * step), text, fill=ink, font=font)
    draw.rectangle([width - width // 5, height // 2, width - 8, height // 2 + 3], fill=ink)
    draw.text((width - width // 5, height // 2 - 14), "500 nm", fill=ink, font=font)
    return np.asarray(image)


def _upscaled(image: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC))


def test_demo_bars_found_at_the_right_row() -> None:
    found, errors = 0, []
    for c, cls in enumerate(DEMO_CLASSES):
        for i in range(10):
            image, box = make_demo_image(cls, np.random.default_rng([11, c, i]), with_bar=True)
            bar = detect_data_bar(image)
            if bar is not None:
                found += 1
                errors.append(abs(bar.y0 - box[3]))
    assert found >= 45  # of 50
    assert max(errors) <= 1


def test_demo_images_without_bar_keep_full_frame() -> None:
    for c, cls in enumerate(DEMO_CLASSES):
        for i in range(10):
            image, box = make_demo_image(cls, np.random.default_rng([12, c, i]), with_bar=False)
            assert box == (0, 0, 256, 256)
            assert find_micrograph_box(image) == (0, 0, 256, 256), (cls, i)


def test_neu_images_are_never_cropped(neu_dir: Path) -> None:
    sample = _neu_sample(neu_dir, 15)
    assert len(sample) == 120
    for image in sample:
        assert find_micrograph_box(image) == (0, 0, 200, 200)


@pytest.mark.parametrize(
    ("style", "background", "ink", "separator"),
    [("fei", 0, 255, None), ("zeiss", 245, 10, None), ("grey", 128, 255, None), ("separator", 0, 230, 200)],
)
def test_foreign_bar_styles_appended(neu_dir: Path, style: str, background: int, ink: int, separator: int | None) -> None:
    lines = ["HV 10.00 kV   WD 5.1 mm   det TLD", "mag 50 000 x   HFW 2.98 um   2024-01-12"]
    hits = 0
    for k, micrograph in enumerate(_neu_sample(neu_dir, 300)):
        micrograph = _upscaled(micrograph, 512)
        bar = _bar(512, 44 + 4 * k, background, ink, lines, separator)
        found = detect_data_bar(np.vstack([micrograph, bar]))
        if found is not None:
            hits += 1
            assert found.y0 == 512, style  # the separator line belongs to the bar
            assert abs(found.background - background) <= 12
            assert 0 < found.confidence <= 1
    assert hits == 6


def test_overlaid_bar_without_extra_rows(neu_dir: Path) -> None:
    # Hitachi-style: the bar replaces the last rows of the frame.
    for micrograph in _neu_sample(neu_dir, 450):
        image = _upscaled(micrograph, 600).copy()
        image[-36:] = _bar(600, 36, 0, 255, ["S-4800 5.0kV 8.2mm x50.0k SE(M)"])
        assert find_micrograph_box(image) == (0, 0, 600, 564)


def test_jpeg_compressed_bar(neu_dir: Path) -> None:
    import io

    micrograph = _upscaled(_neu_sample(neu_dir, 900)[1], 768)
    image = np.vstack([micrograph, _bar(768, 64, 0, 255, ["HV 5 kV  mag 20 000 x", "WD 4.2 mm  2023-05-06"])])
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=85)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
    bar = detect_data_bar(decoded)
    assert bar is not None and abs(bar.y0 - 768) <= 8  # within one JPEG block


def _fade(image: np.ndarray, to: float, clip: bool, rng: np.random.Generator) -> np.ndarray:
    h = image.shape[0]
    ramp = np.clip((np.arange(h) - 0.7 * h) / (0.08 * h), 0, 1)[:, None]
    out = image * (1 - ramp) + to * ramp
    if not clip:
        out = out + rng.normal(0, 3, size=image.shape) * ramp
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_dark_bright_and_smooth_bottoms_are_not_cut(neu_dir: Path) -> None:
    rng = np.random.default_rng(3)
    images = _neu_sample(neu_dir, 60)
    demo = [make_demo_image(cls, np.random.default_rng([13, i]), with_bar=False)[0] for i, cls in enumerate(DEMO_CLASSES * 4)]
    for image in images + demo:
        for to, clip in ((0.0, False), (0.0, True), (255.0, True)):
            faded = _fade(image.astype(np.float64), to, clip, rng)
            assert detect_data_bar(faded) is None
        smooth = image.copy()
        h = image.shape[0]
        smooth[int(0.8 * h) :] = np.linspace(40, 60, image.shape[1]).astype(np.uint8)[None, :]
        assert detect_data_bar(smooth) is None


def test_bright_spots_on_clipped_black_are_not_text() -> None:
    rng = np.random.default_rng(5)
    for i in range(20):
        image, _ = make_demo_image("particles", np.random.default_rng([14, i]), with_bar=False)
        faded = _fade(image.astype(np.float64), 0.0, True, rng)
        for _ in range(8):
            cx, cy, r = rng.uniform(0, 256), rng.uniform(200, 256), rng.uniform(2, 6)
            yy, xx = np.ogrid[:256, :256]
            faded[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 240
        assert detect_data_bar(faded) is None


def test_degenerate_inputs() -> None:
    assert detect_data_bar(np.zeros((256, 256), dtype=np.uint8)) is None
    assert detect_data_bar(np.full((256, 256), 255, dtype=np.uint8)) is None
    assert detect_data_bar(np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)) is None
    assert find_micrograph_box(np.zeros((10, 10), dtype=np.uint8)) == (0, 0, 10, 10)
    with pytest.raises(ValueError):
        detect_data_bar(np.zeros((64, 64), dtype=np.uint16))
    with pytest.raises(ValueError):
        detect_data_bar(np.zeros((64, 64, 3), dtype=np.uint8))


def test_reason_is_given_for_a_rejection() -> None:
    image, _ = make_demo_image("porous", np.random.default_rng(1), with_bar=False)
    bar, reason = _detect(image)
    assert bar is None and reason and reason != "bar"


def test_wide_image_is_subsampled_and_never_over_cropped() -> None:
    image, box = make_demo_image("patterned", np.random.default_rng([15, 0]), size=512, with_bar=True)
    wide = np.asarray(Image.fromarray(image).resize((4608, 4608), Image.Resampling.NEAREST))
    bar = detect_data_bar(wide)
    true_y0 = box[3] * 9
    assert isinstance(bar, DataBar)
    assert true_y0 <= bar.y0 < true_y0 + 3  # at most the subsampling step, on the bar's side
