"""A deterministic, offline demo library of micrograph-like greyscale images.

Five classes of SEM-like surfaces (round nanoparticles, straight nanowires, a
porous sponge, a patterned hole/pillar array, tangled fibres), each drawn at a
random magnification, with SEM edge contrast, blur, shot noise, brightness and
contrast drift, and (in about four images of five) a burned-in data bar with
text and a scale bar in one of several instrument styles.

It is what a new user sees first, the ground truth of the data-bar benchmark
(:func:`make_demo_image` returns the true micrograph box), and what tests use
when they need many small images. Everything comes from a NumPy ``Generator``:
the same seed gives byte-identical PNG files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.jobs import Job, Progress

DEMO_CLASSES: tuple[str, ...] = ("particles", "nanowires", "porous", "patterned", "fibres")

# Share of images drawn without a data bar.
_NO_BAR_PROBABILITY = 0.2


# ----------------------------------------------------------------------------- surfaces
# Each painter returns a float image in [0, 1] of shape (h, w); ``scale`` is the
# magnification factor (feature size multiplier, about 0.6 to 1.7).


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ~sigma.

    Large sigmas are filtered on a coarse grid and upsampled: the same field
    statistics at a fraction of the cost of a wide kernel at full size.
    """
    h, w = shape
    factor = max(1, int(sigma // 2))
    coarse = rng.standard_normal((h // factor + 3, w // factor + 3), dtype=np.float32)
    field = ndimage.gaussian_filter(coarse, sigma / factor, mode="wrap")
    if factor > 1:
        big = (field.shape[1] * factor, field.shape[0] * factor)
        field = np.asarray(Image.fromarray(field, mode="F").resize(big, Image.Resampling.BILINEAR))
    field = field[:h, :w]
    return (field - field.mean()) / (field.std() + 1e-9)


def _canvas(h: int, w: int, level: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("L", (w, h), level)
    return image, ImageDraw.Draw(image)


def _particles(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    base = 0.25 + 0.1 * _smooth_noise(rng, (h, w), 12 * scale)
    ss = 2  # supersampled drawing for smooth edges
    image, draw = _canvas(h * ss, w * ss, 0)
    radius = rng.uniform(3.5, 8.0) * scale
    coverage = rng.uniform(0.15, 0.45)
    count = int(coverage * h * w / (math.pi * radius**2))
    centres = rng.uniform(0, 1, size=(count, 2)) * (w, h)
    # Agglomerates: some particles gather around a few seeds.
    seeds = rng.uniform(0, 1, size=(max(1, count // 25), 2)) * (w, h)
    gathered = rng.random(count) < 0.4
    pick = rng.integers(0, len(seeds), size=count)
    centres[gathered] = seeds[pick[gathered]] + rng.normal(0, 3 * radius, size=(int(gathered.sum()), 2))
    radii = radius * rng.lognormal(0, 0.25, size=count)
    levels = rng.uniform(150, 255, size=count)
    for (cx, cy), r, level in zip(centres, radii, levels, strict=True):
        box = [(cx - r) * ss, (cy - r) * ss, (cx + r) * ss, (cy + r) * ss]
        draw.ellipse(box, fill=int(level))
    mask = np.asarray(image.resize((w, h), Image.Resampling.BOX), dtype=np.float64) / 255
    # Rounded shading: brighter centres, as a sphere under the secondary electron detector.
    dome = ndimage.gaussian_filter(mask.astype(np.float32), 0.6 * radius, truncate=2.5)
    return base * (1 - mask) + mask * (0.45 + 0.55 * dome / (dome.max() + 1e-9))


def _nanowires(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    base = 0.2 + 0.08 * _smooth_noise(rng, (h, w), 20 * scale)
    ss = 2
    image, draw = _canvas(h * ss, w * ss, 0)
    width = rng.uniform(1.2, 2.6) * scale
    count = int(rng.uniform(25, 70) / scale)
    main_angle = rng.uniform(0, math.pi)
    aligned = rng.random() < 0.4  # some samples are combed in one direction
    for _ in range(count):
        length = rng.uniform(0.3, 1.1) * max(h, w)
        angle = main_angle + rng.normal(0, 0.2) if aligned else rng.uniform(0, math.pi)
        cx, cy = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
        dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
        wire = width * rng.uniform(0.7, 1.4)
        draw.line(
            [((cx - dx) * ss, (cy - dy) * ss), ((cx + dx) * ss, (cy + dy) * ss)],
            fill=int(rng.uniform(160, 255)),
            width=max(1, int(round(wire * ss))),
        )
    wires = np.asarray(image.resize((w, h), Image.Resampling.BOX), dtype=np.float64) / 255
    return np.maximum(base, wires)


def _porous(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    field = _smooth_noise(rng, (h, w), rng.uniform(2.5, 5.0) * scale)
    field += 0.35 * _smooth_noise(rng, (h, w), 1.2 * scale)
    pores = field < np.quantile(field, rng.uniform(0.35, 0.6))
    # Pores are dark and darker with depth; walls brighter away from the pore
    # rims. Blurred masks stand in for distance maps (same look, a third of the time).
    solid = (~pores).astype(np.float32)
    rim_distance = ndimage.gaussian_filter(solid, 2.0 * scale, truncate=3.0)
    return np.where(pores, 0.35 * rim_distance**1.5 / 0.5, 0.55 + 0.25 * (2 * rim_distance - 1))


def _patterned(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    period = rng.uniform(12, 24) * scale
    radius = period * rng.uniform(0.22, 0.38)
    angle = rng.uniform(0, math.pi / 3)
    hexagonal = rng.random() < 0.5
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u = (xx * math.cos(angle) + yy * math.sin(angle)) / period
    v = (-xx * math.sin(angle) + yy * math.cos(angle)) / period
    if hexagonal:
        v = v / (math.sqrt(3) / 2)
        u = u - 0.5 * (np.floor(v + 0.5) % 2)
    du = u - np.round(u)
    dv = v - np.round(v)
    if hexagonal:
        dv = dv * (math.sqrt(3) / 2)
    # Fabrication imperfection: a slow, smooth wobble of the radius.
    wobble = 1 + 0.08 * _smooth_noise(rng, (h, w), period)
    dist = np.hypot(du, dv) * period / wobble
    holes = rng.random() < 0.5
    edge = 1 / (1 + np.exp((dist - radius) / 0.7))  # soft disc, 1 inside
    rim = np.exp(-(((dist - radius) / 1.2) ** 2))
    if holes:
        return 0.55 - 0.4 * edge + 0.35 * rim
    return 0.25 + 0.45 * edge + 0.3 * rim


def _fibres(rng: np.random.Generator, h: int, w: int, scale: float, per_area: bool = False) -> np.ndarray:
    base = 0.15 + 0.06 * _smooth_noise(rng, (h, w), 25)
    ss = 2
    image, draw = _canvas(h * ss, w * ss, 0)
    count = int(rng.uniform(8, 20))
    if per_area:  # fine-structure frames: as many fibres per area as in a 256 px image
        count = int(round(count * max(1.0, h * w / 256**2)))
    for _ in range(count):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        heading = rng.uniform(0, 2 * math.pi)
        turn = 0.0
        points = []
        for _ in range(int(rng.uniform(25, 55))):
            points.append((x * ss, y * ss))
            turn = 0.8 * turn + rng.normal(0, 0.1)
            heading += turn
            x += math.cos(heading) * 8
            y += math.sin(heading) * 8
        width = rng.uniform(3.0, 7.0) * scale * ss
        level = rng.uniform(170, 250)
        # Cylindrical shading from nested strokes: dark flanks, bright axis.
        # Later fibres are painted over earlier ones, as they lie on top.
        for frac, gain in ((1.0, 0.55), (0.7, 0.75), (0.35, 1.0)):
            draw.line(points, fill=int(level * gain), width=max(1, int(width * frac)))
    fibres = np.asarray(image.resize((w, h), Image.Resampling.BOX), dtype=np.float64) / 255
    return np.where(fibres > 0.05, fibres, base)


_PAINTERS: dict[str, Callable[[np.random.Generator, int, int, float], np.ndarray]] = {
    "particles": _particles,
    "nanowires": _nanowires,
    "porous": _porous,
    "patterned": _patterned,
    "fibres": _fibres,
}


def _imaging(rng: np.random.Generator, surface: np.ndarray) -> np.ndarray:
    """SEM look: edge brightening, blur, brightness/contrast, shot noise, scan lines."""
    surface = surface.astype(np.float32)
    smooth = ndimage.gaussian_filter(surface, 1.0)
    edges = np.hypot(ndimage.sobel(smooth, axis=0), ndimage.sobel(smooth, axis=1))
    image = surface + np.float32(rng.uniform(0.15, 0.4)) * edges
    image = ndimage.gaussian_filter(image, rng.uniform(0.4, 1.3))
    h, w = image.shape
    # Slow detector gradient across the field.
    ramp_x = np.linspace(0, 1, w, dtype=np.float32)[None, :] * np.float32(rng.uniform(-0.08, 0.08))
    ramp_y = np.linspace(0, 1, h, dtype=np.float32)[:, None] * np.float32(rng.uniform(-0.08, 0.08))
    contrast = np.float32(rng.uniform(0.7, 1.2) * 255)
    brightness = np.float32((rng.uniform(-0.1, 0.12) + 0.5) * 255)
    image = (image + ramp_x + ramp_y - np.float32(0.5)) * contrast + brightness
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(4, 16))
    image += noise
    if rng.random() < 0.3:  # line-to-line scan noise
        image += rng.standard_normal((h, 1), dtype=np.float32) * np.float32(3)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- data bar


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow built without FreeType
        return ImageFont.load_default()


def _draw_bar(rng: np.random.Generator, width: int, height: int, scale: float) -> np.ndarray:
    """An SEM-style data bar: text columns (kV, magnification, WD, date) and a scale bar."""
    style = rng.choice(["black", "white", "grey"], p=[0.5, 0.3, 0.2])
    if style == "black":
        background, ink = int(rng.integers(0, 20)), int(rng.integers(225, 256))
    elif style == "white":
        background, ink = int(rng.integers(230, 256)), int(rng.integers(0, 30))
    else:
        background = int(rng.integers(90, 170))
        ink = 255 if rng.random() < 0.5 else 0
    image, draw = _canvas(height, width, background)
    font_size = max(8, min(int(height * 0.36), 16))
    font = _font(font_size)
    kv = rng.choice([1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0])
    mag = int(round(rng.uniform(5_000, 120_000) * scale, -2))
    wd = rng.uniform(3.0, 12.0)
    day = f"{int(rng.integers(2015, 2026))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
    fields = [f"HV {kv:g} kV", f"mag {mag:,} x".replace(",", " "), f"WD {wd:.1f} mm", day]
    rng.shuffle(fields)
    lines = 2 if height >= 2.6 * font_size + 4 else 1
    text_area = int(width * 0.62)
    margin = max(2, height // 8)
    line_step = (height - 2 * margin) / lines
    x = margin
    # Fill columns of ``lines`` fields left to right while they fit beside the scale bar.
    for start in range(0, len(fields), lines):
        column = fields[start : start + lines]
        column_width = max(int(math.ceil(draw.textlength(text, font=font))) for text in column)
        if x + column_width > text_area:
            break
        for row, text in enumerate(column):
            y = margin + row * line_step + (line_step - font_size) / 2
            draw.text((x, y), text, fill=ink, font=font)
        x += column_width + max(6, font_size)
    # Scale bar: a round length (nm) drawn at a length in pixels that matches it.
    # Magnification refers to a nominal 10 cm display: the field is 1e8 / mag nm wide.
    nm_per_px = 1e8 / mag / width
    target_px = width * rng.uniform(0.12, 0.22)
    nice = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    length_nm = min(nice, key=lambda n: abs(n / nm_per_px - target_px))
    bar_px = int(np.clip(length_nm / nm_per_px, width * 0.08, width * 0.3))
    x1 = width - margin - 2
    x0 = x1 - bar_px
    y_bar = height - margin - max(2, height // 10)
    draw.rectangle([x0, y_bar, x1, y_bar + max(1, height // 14)], fill=ink)
    label = f"{length_nm} nm" if length_nm < 1000 else f"{length_nm / 1000:g} µm"
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    label_x = min(max(0, (x0 + x1 - (right - left)) / 2 - left), width - (right - left) - 1)
    label_y = max(1 - top, y_bar - 2 - bottom)
    draw.text((label_x, label_y), label, fill=ink, font=font)
    if rng.random() < 0.3:  # separator line between image and bar
        draw.line([(0, 0), (width, 0)], fill=ink, width=1)
    return np.asarray(image, dtype=np.uint8)


# ----------------------------------------------------------------------------- public API


def make_demo_image(
    cls: str,
    rng: np.random.Generator,
    size: int = 256,
    with_bar: bool | None = None,
    *,
    height: int | None = None,
    fine: bool = False,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Draw one micrograph-like image of a demo class.

    Args:
        cls: One of :data:`DEMO_CLASSES`.
        rng: The random source (the image is a pure function of its state).
        size: Width in pixels (at least 64), and the height unless ``height`` is given.
        with_bar: Force a data bar on or off; None draws one in about 80% of images.
        height: Height in pixels (at least 64); None: ``size`` (square).
        fine: Keep features at their 256 px sizes whatever the frame (a large frame then
            holds many small features, as a high-resolution SEM image does); False scales
            features with the width, so every size looks like the 256 px image.

    Returns:
        ``(image, box)``: a (height, size) uint8 image and the true micrograph box
        ``(x0, y0, x1, y1)``, which excludes the data bar.

    Raises:
        NmidError: For an unknown class or a side below 64.
    """
    if cls not in _PAINTERS:
        raise NmidError(f"unknown demo class {cls!r}; choose from {', '.join(DEMO_CLASSES)}")
    height = size if height is None else height
    if min(size, height) < 64:
        raise NmidError(f"demo images must be at least 64 pixels, not {size} x {height}")
    scale = float(np.exp(rng.uniform(math.log(0.6), math.log(1.7))))
    if not fine:
        scale = scale * size / 256
    if with_bar is None:
        with_bar = bool(rng.random() >= _NO_BAR_PROBABILITY)
    bar_height = int(round(height * rng.uniform(0.09, 0.16))) if with_bar else 0
    micro_h = height - bar_height
    if fine and cls == "fibres":
        surface = _fibres(rng, micro_h, size, scale, per_area=True)
    else:
        surface = _PAINTERS[cls](rng, micro_h, size, scale)
    micrograph = _imaging(rng, surface)
    if not with_bar:
        return micrograph, (0, 0, size, height)
    bar = _draw_bar(rng, size, bar_height, scale)
    return np.vstack([micrograph, bar]), (0, 0, size, micro_h)


def generate_demo(
    out_dir: Path,
    per_class: int = 60,
    seed: int = 0,
    size: int = 256,
) -> Job[list[tuple[Path, str]]]:
    """Write the demo library as PNGs in ImageFolder layout: ``out_dir/<class>/<class>_NNN.png``.

    Each image has its own generator seeded by ``(seed, class, index)``, so the
    output does not depend on the order of generation and the same seed gives
    byte-identical files.

    Args:
        out_dir: Target folder (created if missing).
        per_class: Images per class.
        seed: Random seed.
        size: Image side in pixels.

    Yields:
        Progress after each image (each yield is a cancel point).

    Returns:
        ``(path, label)`` for every image written, in class order.

    Raises:
        NmidError: If ``per_class`` is below 1, ``seed`` negative, ``size`` below 64,
            or the folder cannot be written.
    """
    if per_class < 1:
        raise NmidError(f"per_class must be at least 1, not {per_class}")
    return (yield from generate_custom_demo(out_dir, [per_class] * len(DEMO_CLASSES), seed=seed, size=size))


def generate_custom_demo(
    out_dir: Path,
    counts: Sequence[int],
    *,
    seed: int = 0,
    size: int = 256,
    height: int | None = None,
    fine: bool = False,
) -> Job[list[tuple[Path, str]]]:
    """:func:`generate_demo` with per-class counts, any frame and fine structure (harder proxies).

    Image ``i`` of a class is the same file as in :func:`generate_demo` with the same seed,
    size and defaults, whatever the counts.

    Args:
        out_dir: Target folder (created if missing).
        counts: Images per class, one count per class of :data:`DEMO_CLASSES` in order
            (unequal counts: an imbalanced library).
        seed: Random seed.
        size: Image width in pixels (and height, unless ``height`` is given).
        height: Image height in pixels; None: square.
        fine: Features at their 256 px sizes in any frame (see :func:`make_demo_image`).

    Returns:
        ``(path, label)`` for every image written, in class order.

    Raises:
        NmidError: Counts that are not one per class of at least 1, ``seed`` negative, a
            side below 64, or the folder cannot be written.
    """
    if seed < 0:
        raise NmidError(f"seed must be 0 or more, not {seed}")
    if min(size, size if height is None else height) < 64:
        raise NmidError(f"demo images must be at least 64 pixels, not {size}")
    counts = [int(n) for n in counts]
    if len(counts) != len(DEMO_CLASSES) or min(counts) < 1:
        raise NmidError(f"counts must give {len(DEMO_CLASSES)} class sizes of at least 1, not {counts}")
    out_dir = Path(out_dir)
    total = sum(counts)
    written: list[tuple[Path, str]] = []
    for class_index, cls in enumerate(DEMO_CLASSES):
        folder = out_dir / cls
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NmidError(f"cannot create {folder}: {exc.strerror or exc}") from None
        for i in range(counts[class_index]):
            rng = np.random.default_rng([seed, class_index, i])
            image, _ = make_demo_image(cls, rng, size=size, height=height, fine=fine)
            path = folder / f"{cls}_{i:03d}.png"
            try:
                Image.fromarray(image).save(path, format="PNG", optimize=False)
            except OSError as exc:
                raise NmidError(f"cannot write {path}: {exc.strerror or exc}") from None
            written.append((path, cls))
            yield Progress(len(written), total, f"{cls}/{path.name}")
    return written
