"""Data-bar detection and false-crop rates on images with and without a burned-in bar.

Usage::

    .venv/bin/python benchmarks/databar_rates.py [--neu PATH] [--demo-per-class N] [--seed S]

Sets (every "bar" image has a known true micrograph box):

* demo: the built-in demo generator, with and without its own bar;
* NEU plain: all 1800 NEU-SDD images (steel surfaces, no bar): must not be cropped;
* NEU + bars of other instruments' styles, drawn here independently of the demo
  generator, with other fonts, sizes, layouts and JPEG compression:
  FEI/Thermo (black, white text in a table of columns), Zeiss (white/light grey,
  black text, logo block), separator line (black bar under a thin bright line),
  JEOL (one line, grey text on black, JPEG), Hitachi (drawn over the image's last
  rows, no extra rows, dotted scale bar);
* hard negatives without a bar: NEU and demo images whose bottom fades to black,
  is clipped to black or white, or is smooth, some with bright spots in the dark.

A detection is "correct" when |y0 - true y0| <= max(2, 1% of height); a false crop
is any detection on an image without a bar. Prints one table.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from nmid_desktop.core.databar import detect_data_bar
from nmid_desktop.core.demo import DEMO_CLASSES, make_demo_image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_NEU = REPO.parent / "shared" / "data" / "neu_cls"
SYSTEM_FONTS = [
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"),
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
]


@dataclass
class Tally:
    """Counts for one set."""

    name: str
    with_bar: bool
    n: int = 0
    detected: int = 0
    correct: int = 0
    errors: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, image: np.ndarray, true_y0: int | None) -> None:
        start = time.process_time()
        bar = detect_data_bar(image)
        self.seconds += time.process_time() - start
        self.n += 1
        if bar is None:
            return
        self.detected += 1
        if true_y0 is not None:
            error = abs(bar.y0 - true_y0)
            self.errors.append(error)
            if error <= max(2, round(0.01 * image.shape[0])):
                self.correct += 1


def font(rng: np.random.Generator, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A font that is not always the demo generator's: DejaVu when present, the bitmap font, Aileron."""
    choices: list[Callable[[], ImageFont.ImageFont | ImageFont.FreeTypeFont]] = [
        lambda: ImageFont.load_default(size=size),
        ImageFont.load_default_imagefont,
    ]
    choices += [lambda p=p: ImageFont.truetype(str(p), size) for p in SYSTEM_FONTS if p.exists()]
    return choices[int(rng.integers(len(choices)))]()


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through JPEG (artefacts around text, as in many saved micrographs)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def upscale(image: np.ndarray, side: int) -> np.ndarray:
    """NEU images are 200 px; SEM frames are 512-2048 px: resample to a realistic size."""
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC))


def text_height(fnt) -> int:
    """Pixel height of a line of text in this font (the bitmap font ignores the requested size)."""
    left, top, right, bottom = fnt.getbbox("Hg0123456789 kVµm")
    return int(bottom)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fnt, fill: int) -> int:
    draw.text(xy, text, fill=fill, font=fnt)
    return int(draw.textlength(text, font=fnt))


def fei_bar(rng: np.random.Generator, width: int) -> np.ndarray:
    """Black bar, white text in a table of label/value columns with thin cell lines, scale bar right."""
    height = int(width * rng.uniform(0.06, 0.11))
    size = max(8, int(height * 0.3))
    fnt = font(rng, size)
    height = max(height, int(2 * text_height(fnt) / 0.8) + 2)  # two text rows with margins
    bar = Image.new("L", (width, height), int(rng.integers(0, 12)))
    draw = ImageDraw.Draw(bar)
    ink = int(rng.integers(220, 256))
    cells = [("HV", f"{rng.choice([2, 5, 10, 15, 20, 30]):.2f} kV"), ("mag", f"{int(rng.integers(5, 200)) * 1000:,} x"),
             ("WD", f"{rng.uniform(3, 15):.1f} mm"), ("det", rng.choice(["TLD", "ETD", "CBS"])),
             ("HFW", f"{rng.uniform(0.5, 50):.2f} µm"), ("mode", "SE")]
    x = 4
    for label, value in cells:
        if x > width * 0.6:
            break
        w1 = _text(draw, (x, height * 0.12), label, fnt, ink)
        w2 = _text(draw, (x, height * 0.55), value, fnt, ink)
        x += max(w1, w2) + size
        if rng.random() < 0.7:
            draw.line([(x - size // 2, 2), (x - size // 2, height - 3)], fill=int(rng.integers(90, 200)))
    length = int(width * rng.uniform(0.1, 0.2))
    x1 = width - 8
    draw.rectangle([x1 - length, int(height * 0.62), x1, int(height * 0.62) + max(2, height // 12)], fill=ink)
    draw.line([(x1 - length, int(height * 0.5)), (x1 - length, int(height * 0.75))], fill=ink, width=2)
    draw.line([(x1, int(height * 0.5)), (x1, int(height * 0.75))], fill=ink, width=2)
    _text(draw, (x1 - length, height * 0.12), f"{rng.choice([100, 200, 500])} nm", fnt, ink)
    if rng.random() < 0.5:
        draw.rectangle([0, 0, width - 1, height - 1], outline=int(rng.integers(60, 140)))
    return np.asarray(bar)


def zeiss_bar(rng: np.random.Generator, width: int) -> np.ndarray:
    """White or light grey bar, black text 'EHT = 5.00 kV' etc., logo block, scale bar with label above."""
    height = int(width * rng.uniform(0.08, 0.16))
    size = max(8, int(height * 0.22))
    fnt = font(rng, size)
    height = max(height, int(2 * text_height(fnt) / 0.75) + 2)
    background = int(rng.integers(200, 256))
    bar = Image.new("L", (width, height), background)
    draw = ImageDraw.Draw(bar)
    ink = int(rng.integers(0, 40))
    length = int(width * rng.uniform(0.08, 0.15))
    draw.rectangle([8, int(height * 0.55), 8 + length, int(height * 0.55) + max(2, height // 14)], fill=ink)
    _text(draw, (8, height * 0.15), f"{rng.choice([1, 2, 10, 20])} µm", fnt, ink)
    fields = [f"EHT = {rng.choice([1, 3, 5, 10, 15]):.2f} kV", f"WD = {rng.uniform(2, 12):.1f} mm",
              f"Signal A = {rng.choice(['InLens', 'SE2', 'AsB'])}", f"Mag = {rng.uniform(1, 200):.2f} K X",
              f"Date :{int(rng.integers(1, 29))} Jan 2021", f"Time :{int(rng.integers(0, 24)):02d}:12:55"]
    x = 16 + length + size
    for i in range(0, len(fields), 2):
        if x > width * 0.75:
            break
        w1 = _text(draw, (x, height * 0.15), fields[i], fnt, ink)
        w2 = _text(draw, (x, height * 0.55), fields[i + 1], fnt, ink)
        x += max(w1, w2) + 2 * size
    if rng.random() < 0.6:  # instrument logo: a dark block with light letters
        lx = int(width * 0.86)
        draw.rectangle([lx, int(height * 0.2), width - 6, int(height * 0.8)], fill=ink)
        _text(draw, (lx + 3, height * 0.3), "ZEISS", fnt, background)
    return np.asarray(bar)


def separator_bar(rng: np.random.Generator, width: int) -> np.ndarray:
    """Black bar with a thin bright or grey separator line on top and one text line."""
    height = int(width * rng.uniform(0.05, 0.09))
    size = max(8, int(height * 0.45))
    fnt = font(rng, size)
    height = max(height, text_height(fnt) + 8)
    bar = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(bar)
    line = int(rng.integers(1, 4))
    draw.rectangle([0, 0, width, line - 1], fill=int(rng.choice([255, 180, 128])))
    text = f"SEM HV: {rng.choice([5, 10, 20])}.0 kV   WD: {rng.uniform(5, 20):.2f} mm   View field: {rng.uniform(1, 90):.1f} µm"
    _text(draw, (6, line + (height - line - text_height(fnt)) / 2), text, fnt, 255)
    length = int(width * 0.12)
    draw.rectangle([width - length - 10, height // 2, width - 10, height // 2 + 2], fill=255)
    return np.asarray(bar)


def jeol_bar(rng: np.random.Generator, width: int) -> np.ndarray:
    """JEOL-like: black, one line of light-grey text and a scale bar in the middle of the line."""
    height = int(width * rng.uniform(0.04, 0.07))
    size = max(8, int(height * 0.6))
    fnt = font(rng, size)
    height = max(height, text_height(fnt) + 6)
    bar = Image.new("L", (width, height), int(rng.integers(0, 25)))
    draw = ImageDraw.Draw(bar)
    ink = int(rng.integers(180, 256))
    y = (height - text_height(fnt)) / 2
    x = 6 + _text(draw, (6, y), f"SEI  {rng.choice([5, 10, 15])}kV  WD{int(rng.integers(6, 15))}mm  SS30  x{int(rng.integers(1, 50)) * 1000:,}", fnt, ink)
    x += size
    draw.rectangle([x, height // 2 - 1, x + int(width * 0.1), height // 2 + 1], fill=ink)
    _text(draw, (x + int(width * 0.1) + size, y), "1µm", fnt, ink)
    _text(draw, (int(width * 0.8), y), "JEOL  10/12/2019", fnt, ink)
    return np.asarray(bar)


def hitachi_overlay(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, int]:
    """Hitachi-like: the last rows of the frame become a black band with text and a dotted scale bar."""
    out = image.copy()
    h, width = out.shape
    height = int(h * rng.uniform(0.05, 0.08))
    size = max(8, int(height * 0.55))
    fnt = font(rng, size)
    height = max(height, text_height(fnt) + 6)
    band = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(band)
    y = (height - text_height(fnt)) / 2
    x = 4 + _text(draw, (4, y), f"S-4800 {rng.choice([1.0, 5.0, 15.0])}kV {rng.uniform(3, 15):.1f}mm x{rng.uniform(1, 200):.1f}k SE(M)", fnt, 255)
    ticks_x = max(x + size, int(width * 0.65))
    for i in range(11):
        tx = ticks_x + i * int(width * 0.02)
        if tx >= width - 2:
            break
        draw.line([(tx, height // 2 - 3), (tx, height // 2 + 3)], fill=255)
    _text(draw, (ticks_x + int(width * 0.22), y), f"{rng.choice([1.0, 5.0, 50.0])}um", fnt, 255)
    out[h - height :] = np.asarray(band)
    return out, h - height


STYLES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "FEI-like": fei_bar,
    "Zeiss-like": zeiss_bar,
    "separator": separator_bar,
    "JEOL-like": jeol_bar,
}


def neu_images(root: Path) -> Iterator[np.ndarray]:
    """Every NEU image as 2-D uint8, in a fixed order."""
    for path in sorted(root.rglob("*.jpg")):
        with Image.open(path) as image:
            yield np.asarray(image.convert("L"))


def dark_bottom(rng: np.random.Generator, image: np.ndarray, kind: str) -> np.ndarray:
    """No bar, but a bottom that is dark, clipped or smooth: must not be cropped."""
    h, w = image.shape
    out = image.astype(np.float64)
    start = int(h * rng.uniform(0.6, 0.85))
    ramp = np.clip((np.arange(h) - start) / max(1, h * 0.08), 0, 1)[:, None]
    if kind == "fade-black":
        out = out * (1 - 0.9 * ramp) + rng.normal(0, 3, size=out.shape) * ramp
    elif kind == "clip-black":
        out = out * (1 - ramp)  # hard zero at the bottom after a fade
    elif kind == "clip-black-spots":
        out = out * (1 - ramp)
        for _ in range(int(rng.integers(3, 12))):
            cx, cy = rng.uniform(0, w), rng.uniform(start, h)
            r = rng.uniform(2, 6)
            yy, xx = np.ogrid[:h, :w]
            out[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 240
    elif kind == "clip-white":
        out = out * (1 - ramp) + 255 * ramp
    elif kind == "smooth":
        blurred = np.asarray(Image.fromarray(image).resize((8, 8), Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64)
        out = out * (1 - ramp) + blurred * ramp
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neu", type=Path, default=DEFAULT_NEU, help="NEU-SDD ImageFolder (default: %(default)s)")
    parser.add_argument("--demo-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    tallies: list[Tally] = []

    demo_bar, demo_none = Tally("demo, own bar", True), Tally("demo, no bar", False)
    for ci, cls in enumerate(DEMO_CLASSES):
        for i in range(args.demo_per_class):
            image, box = make_demo_image(cls, np.random.default_rng([args.seed, ci, i]), size=256, with_bar=i % 5 != 0)
            if box[3] < image.shape[0]:
                demo_bar.add(image, box[3])
            else:
                demo_none.add(image, None)
    tallies += [demo_bar, demo_none]

    demo_big = Tally("demo 768 px, own bar, JPEG", True)
    for i in range(100):
        cls = DEMO_CLASSES[i % len(DEMO_CLASSES)]
        image, box = make_demo_image(cls, np.random.default_rng([args.seed, 99, i]), size=768, with_bar=True)
        demo_big.add(jpeg(image, int(rng.integers(60, 95))), box[3])
    tallies.append(demo_big)

    if not args.neu.is_dir():
        print(f"NEU not found at {args.neu}; only demo sets measured", file=sys.stderr)
    else:
        neu = list(neu_images(args.neu))
        plain = Tally("NEU plain (all)", False)
        for image in neu:
            plain.add(image, None)
        tallies.append(plain)
        picks = rng.permutation(len(neu))
        by_codec = {"lossless": Tally("NEU + foreign bars, lossless", True), "jpeg": Tally("NEU + foreign bars, JPEG q60-95", True)}
        for k, (style, draw_bar) in enumerate(STYLES.items()):
            tally = Tally(f"NEU + {style}", True)
            for j in picks[k * 150 : (k + 1) * 150]:
                side = int(rng.choice([200, 512, 768, 1024]))
                micrograph = neu[j] if side == 200 else upscale(neu[j], side)
                image = np.vstack([micrograph, draw_bar(rng, side)])
                codec = "jpeg" if rng.random() < 0.5 else "lossless"
                if codec == "jpeg":
                    image = jpeg(image, int(rng.integers(60, 96)))
                tally.add(image, micrograph.shape[0])
                by_codec[codec].add(image, micrograph.shape[0])
            tallies.append(tally)
        hitachi = Tally("NEU + Hitachi overlay", True)
        for j in picks[600:750]:
            side = int(rng.choice([200, 512, 1024]))
            image, y0 = hitachi_overlay(rng, neu[j] if side == 200 else upscale(neu[j], side))
            codec = "jpeg" if rng.random() < 0.5 else "lossless"
            if codec == "jpeg":
                image = jpeg(image, int(rng.integers(60, 96)))
            hitachi.add(image, y0)
            by_codec[codec].add(image, y0)
        tallies.append(hitachi)
        for kind in ("fade-black", "clip-black", "clip-black-spots", "clip-white", "smooth"):
            tally = Tally(f"NEU {kind} bottom, no bar", False)
            for j in picks[750:950]:
                tally.add(dark_bottom(rng, neu[j], kind), None)
            tallies.append(tally)
    dark_demo = Tally("demo dark/smooth bottom, no bar", False)
    kinds = ("fade-black", "clip-black", "clip-black-spots", "clip-white", "smooth")
    for i in range(250):
        image, _ = make_demo_image(DEMO_CLASSES[i % 5], np.random.default_rng([args.seed, 77, i]), with_bar=False)
        dark_demo.add(dark_bottom(rng, image, kinds[i % 5]), None)
    tallies.append(dark_demo)

    speed = np.random.default_rng(0).integers(0, 256, size=(1024, 1024), dtype=np.uint8)
    speed[-80:] = 0
    start = time.process_time()
    for _ in range(50):
        detect_data_bar(speed)
    per_call_ms = (time.process_time() - start) / 50 * 1000

    print(f"{'set':38s} {'n':>5s} {'detected':>9s} {'correct':>8s} {'false crop':>10s} {'mean|dy0|':>9s} {'cpu ms':>7s}")
    for t in tallies:
        ms = t.seconds / max(1, t.n) * 1000
        if t.with_bar:
            mean_err = f"{np.mean(t.errors):9.2f}" if t.errors else f"{'-':>9s}"
            print(f"{t.name:38s} {t.n:5d} {t.detected / t.n:9.1%} {t.correct / t.n:8.1%} {'-':>10s} {mean_err} {ms:7.2f}")
        else:
            print(f"{t.name:38s} {t.n:5d} {'-':>9s} {'-':>8s} {t.detected / t.n:10.1%} {'-':>9s} {ms:7.2f}")
    if args.neu.is_dir():
        print("\nthe five NEU + foreign-bar sets above, split by codec:")
        for t in by_codec.values():
            print(f"{t.name:38s} {t.n:5d} {t.detected / t.n:9.1%} {t.correct / t.n:8.1%}")
    bars = [t for t in tallies if t.with_bar]
    clean = [t for t in tallies if not t.with_bar]
    print(
        f"\nall bar sets: detected {sum(t.detected for t in bars) / sum(t.n for t in bars):.1%}, "
        f"correct {sum(t.correct for t in bars) / sum(t.n for t in bars):.1%}; "
        f"all no-bar sets: false crops {sum(t.detected for t in clean)} of {sum(t.n for t in clean)}; "
        f"1024 x 1024 detection {per_call_ms:.2f} ms CPU"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
