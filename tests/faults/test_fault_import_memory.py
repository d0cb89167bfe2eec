"""Files and import: decoding memory is bounded (paged TIFF, luma-only JPEG, a shared byte budget).

The full-size figures (64 and 400 MP folders, peak RSS) come from
``benchmarks/import_memory.py``; these tests check the mechanisms on small frames.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image

import nmid_desktop.core.images as images
from nmid_desktop.core.errors import ImageError
from nmid_desktop.core.importer import MemoryBudget, import_files
from nmid_desktop.core.jobs import run_job
from nmid_desktop.core.store import open_library


@pytest.fixture
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paged decoding, a strided statistics sample and bands, all on frames of a few hundred pixels."""
    monkeypatch.setattr(images, "_PAGED_MIN_PIXELS", 1000)
    monkeypatch.setattr(images, "_MAX_STAT_SAMPLES", 5000)
    monkeypatch.setattr(images, "_BAND_PIXELS", 3000)


LAYOUTS = [
    {}, {"tile": (64, 64)}, {"rowsperstrip": 7}, {"photometric": "miniswhite"}, {"compression": "zlib"}, {"byteorder": ">"},
]


@hsettings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(["uint8", "uint16", "int16", "float32", "float64", "uint32"]),
    layout=st.sampled_from(range(len(LAYOUTS))),
    shape=st.tuples(st.integers(40, 300), st.integers(40, 300)),
    seed=st.integers(0, 1000),
)
def test_paged_tiff_view_equals_the_whole_frame_view(tmp_path_factory, dtype, layout, shape, seed) -> None:
    old = images._PAGED_MIN_PIXELS, images._MAX_STAT_SAMPLES, images._BAND_PIXELS
    images._PAGED_MIN_PIXELS, images._MAX_STAT_SAMPLES, images._BAND_PIXELS = 1000, 5000, 3000
    try:
        rng = np.random.default_rng(seed)
        kind = np.dtype(dtype)
        if kind.kind == "f":
            array = rng.normal(size=shape).astype(kind)
            array[rng.random(shape) < 0.01] = np.nan
        else:
            info = np.iinfo(kind)
            array = rng.integers(max(info.min, -5000), min(info.max, 60000), size=shape).astype(kind)
        path = tmp_path_factory.mktemp("paged") / "x.tif"
        tifffile.imwrite(path, array, **LAYOUTS[layout])
        decoded = images.decode_for_import(path)
        assert decoded.dtype == dtype and (decoded.height, decoded.width) == shape
        assert np.array_equal(decoded.view8, images.read_image(path).view8)
    finally:
        images._PAGED_MIN_PIXELS, images._MAX_STAT_SAMPLES, images._BAND_PIXELS = old


def test_a_large_16_bit_tiff_is_decoded_without_a_raw_copy(tmp_path, monkeypatch) -> None:
    # The statistics sample (at most _MAX_STAT_SAMPLES values) costs a bounded few bytes per
    # sample whatever the frame; shrink it so the test sees what scales with the frame.
    monkeypatch.setattr(images, "_MAX_STAT_SAMPLES", 250_000)
    path = tmp_path / "big16.tif"
    side = 4000  # 16 MP: the paged path; the raw frame alone would be 32 MB
    tifffile.imwrite(path, (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16).reshape(side, side))
    tracemalloc.start()
    try:
        decoded = images.decode_for_import(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded.view8.shape == (side, side)
    # The view (16 MB), a band with its index temporaries and the sample; a raw copy would add 32 MB.
    assert peak < 34_000_000, f"peak {peak / 1e6:.0f} MB: more than the view, a band and the sample"


def test_a_truncated_uncompressed_tiff_is_reported_by_the_paged_reader(tmp_path, small_thresholds) -> None:
    whole = tmp_path / "w.tif"
    tifffile.imwrite(whole, np.ones((200, 200), np.uint16))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[:50_000])
    with pytest.raises(ImageError, match="truncated"):
        images.decode_for_import(cut)


def test_colour_jpeg_is_decoded_to_luma_only(tmp_path, small_thresholds) -> None:
    path = tmp_path / "c.jpg"
    rgb = np.random.default_rng(0).integers(0, 256, (600, 500, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=90)
    tracemalloc.start()
    try:
        decoded = images.decode_for_import(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded.view8.shape == (600, 500) and decoded.dtype == "uint8"
    assert peak < 600 * 500 * 3  # less than the RGB frame NumPy would have held


def test_the_budget_lets_an_oversized_file_run_alone() -> None:
    budget = MemoryBudget(100)
    running: list[int] = []
    peak = [0]
    lock = threading.Lock()

    def work(n: int) -> None:
        got = budget.reserve(n)
        with lock:
            running.append(n)
            peak[0] = max(peak[0], sum(running))
        time.sleep(0.05)
        with lock:
            running.remove(n)
        budget.release(got)

    threads = [threading.Thread(target=work, args=(n,)) for n in (60, 60, 500, 30, 30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] <= 500  # the big one never overlapped anything
    assert all(not t.is_alive() for t in threads)


def test_an_import_of_several_large_files_stays_within_the_budget(tmp_path, monkeypatch) -> None:
    """Four 2 MP files on four threads with a budget of one file: decoded one at a time."""
    import nmid_desktop.core.importer as importer

    paths = []
    for i in range(4):
        path = tmp_path / f"f{i}.png"
        Image.fromarray(np.full((1000, 2000), 40 * i, np.uint8)).save(path)
        paths.append(path)
    active = [0]
    seen = [0]
    real = importer.decode_for_import

    def counting(path: Path, page: int = 0, *, max_pixels: int = images.DEFAULT_MAX_PIXELS):
        active[0] += 1
        seen[0] = max(seen[0], active[0])
        try:
            time.sleep(0.05)
            return real(path, page, max_pixels=max_pixels)
        finally:
            active[0] -= 1

    monkeypatch.setattr(importer, "decode_for_import", counting)
    monkeypatch.setattr(importer, "DECODE_MEMORY_BYTES", 10_000_000)  # one 2 MP file's estimate fills it
    store = open_library(tmp_path / "lib")
    try:
        report = run_job(import_files(store, paths, workers=4))
    finally:
        store.close()
    assert report.imported == 4
    assert seen[0] == 1


# ----------------------------------------------------------------------------- PNG and BMP in strips

from pngwrite import CHANNELS, write_png  # noqa: E402

PNG_TYPES = [
    (depth, colour)
    for colour in (0, 2, 3, 4, 6)
    for depth in (1, 2, 4, 8, 16)
    if colour == 0 or (colour == 3 and depth <= 8) or (colour in (2, 4, 6) and depth >= 8)
]


def _same_as_whole_decode(path: Path) -> None:
    whole = images.read_image(path)
    striped = images.decode_for_import(path)
    assert (striped.height, striped.width) == whole.shape
    assert striped.dtype == whole.raw.dtype.name
    assert np.array_equal(striped.view8, whole.view8)


@pytest.mark.parametrize("interlace", [False, True], ids=["plain", "adam7"])
@pytest.mark.parametrize(("depth", "colour"), PNG_TYPES, ids=[f"{d}bit-type{c}" for d, c in PNG_TYPES])
def test_a_png_decoded_in_strips_equals_the_whole_decode(tmp_path, small_thresholds, depth, colour, interlace) -> None:
    """Rows cycle through all five filter types; strips of a few rows each (prefix rows matter)."""
    rng = np.random.default_rng(depth * 10 + colour)
    palette = trns = None
    if colour == 3:
        palette = rng.integers(0, 256, (1 << depth, 3))
        if depth == 8:
            trns = bytes(range(0, 250, 50))  # palette transparency: expands to RGBA
        elif depth == 4:
            palette[:, 1] = palette[:, 2] = palette[:, 0]  # a grey palette: expands to L
    elif colour == 0 and depth == 8:
        trns = b"\x00\x10"
    for shape in [(43, 57), (23, 131), (31, 1)]:
        samples = rng.integers(0, 1 << depth, (*shape, CHANNELS[colour]))
        path = tmp_path / f"x{shape[1]}.png"
        write_png(path, samples, depth=depth, colour=colour, palette=palette, trns=trns, interlace=interlace)
        _same_as_whole_decode(path)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16", "1"])
def test_a_png_written_by_pillow_decodes_the_same_in_strips(tmp_path, small_thresholds, mode) -> None:
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray((rng.integers(0, 65536, (70, 90))).astype(np.uint16))
    elif mode == "P":
        image = rgb.quantize(40)
    else:
        image = rgb.convert(mode)
    path = tmp_path / "p.png"
    image.save(path, optimize=mode == "P")
    _same_as_whole_decode(path)


def _write_bmp(path: Path, rgb: np.ndarray, bits: int, top_down: bool) -> None:
    """An uncompressed 24- or 32-bit BMP (BITMAPINFOHEADER), rows padded to 4 bytes."""
    height, width = rgb.shape[:2]
    bgr = rgb[:, :, ::-1]
    if bits == 32:
        bgr = np.concatenate([bgr, np.full((height, width, 1), 255, np.uint8)], axis=2)
    stride = (width * bits // 8 + 3) & ~3
    rows = np.zeros((height, stride), np.uint8)
    rows[:, : width * bits // 8] = bgr.reshape(height, -1)
    if not top_down:
        rows = rows[::-1]
    header = b"BM" + np.array([14 + 40 + rows.size, 0, 14 + 40], "<u4").tobytes()[:4] + b"\0\0\0\0"
    header += np.array([14 + 40], "<u4").tobytes()
    info = np.array([40, width, -height if top_down else height], "<i4").tobytes()
    info += np.array([1, bits], "<u2").tobytes() + np.array([0, rows.size, 2835, 2835, 0, 0], "<u4").tobytes()
    path.write_bytes(header + info + rows.tobytes())


@pytest.mark.parametrize("top_down", [False, True], ids=["bottom-up", "top-down"])
@pytest.mark.parametrize("bits", [24, 32])
def test_a_bmp_decoded_in_strips_equals_the_whole_decode(tmp_path, small_thresholds, bits, top_down) -> None:
    rng = np.random.default_rng(bits)
    for width in (61, 62, 1):  # every row padding
        path = tmp_path / f"x{width}.bmp"
        _write_bmp(path, rng.integers(0, 256, (37, width, 3), dtype=np.uint8), bits, top_down)
        assert Image.open(path).size == (width, 37)
        _same_as_whole_decode(path)


@pytest.mark.parametrize("mode", ["L", "P", "1"])
def test_a_palette_or_grey_bmp_decodes_the_same_in_strips(tmp_path, small_thresholds, mode) -> None:
    rgb = Image.fromarray(np.random.default_rng(5).integers(0, 256, (45, 33, 3), dtype=np.uint8))
    path = tmp_path / "p.bmp"
    (rgb.quantize(60) if mode == "P" else rgb.convert(mode)).save(path)
    _same_as_whole_decode(path)


def test_a_truncated_png_or_bmp_names_the_row_where_it_ends(tmp_path, small_thresholds) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (80, 60, 3), dtype=np.uint8)
    png, bmp = tmp_path / "w.png", tmp_path / "w.bmp"
    write_png(png, rgb, depth=8, colour=2, idat_pieces=1)
    _write_bmp(bmp, rgb, 24, top_down=False)
    for whole in (png, bmp):
        cut = tmp_path / f"cut{whole.suffix}"
        cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) * 2 // 3])
        with pytest.raises(ImageError, match=r"truncated .* (row \d+ of 80|bottom \d+ of 80 rows)"):
            images.decode_for_import(cut)


_RSS_PROBE = r"""
import sys
from pathlib import Path
import nmid_desktop.core.images as images

def peak_rss():
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak (kept across exec).
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

images._BAND_PIXELS = 250_000  # strips of a quarter megapixel: their few MB do not hide the frame
path = Path(sys.argv[1])
images.probe_image(path)
before = peak_rss()
decoded = images.decode_for_import(path)
print(peak_rss() - before, decoded.width * decoded.height)
"""


@pytest.mark.parametrize("kind", ["png", "bmp"])
def test_decoding_a_16_mp_rgb_png_or_bmp_costs_less_than_two_bytes_a_pixel(tmp_path, kind) -> None:
    """Peak RSS growth of one decode, in a fresh process: Pillow's whole RGB frame alone is 4 bytes a pixel."""
    import subprocess
    import sys

    if not Path("/proc/self/status").exists():
        pytest.skip("peak RSS is read from /proc/self/status (Linux)")
    side = 4000  # 16 MP: the strip path's threshold
    y = np.arange(side, dtype=np.uint16)[:, None]
    x = np.arange(side, dtype=np.uint16)[None, :]
    grey = ((x * 7) ^ (y * 3)).astype(np.uint8)
    rgb = np.stack([grey, grey[::-1], grey[:, ::-1]], -1)
    path = tmp_path / f"big.{kind}"
    if kind == "png":
        Image.fromarray(rgb).save(path, compress_level=1)
    else:
        _write_bmp(path, rgb, 24, top_down=False)
    del rgb, grey
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    grown, pixels = (int(v) for v in out.stdout.split())
    assert pixels == side * side
    # The view is 1 byte a pixel; strips and their conversion temporaries are a few MB (Pillow's frame: 4).
    assert grown < 2 * pixels, f"decoding grew RSS by {grown / 1e6:.0f} MB for {pixels / 1e6:.0f} MP"


RGB_LAYOUTS = [{}, {"rowsperstrip": 5}, {"tile": (32, 32)}, {"compression": "zlib"}, {"byteorder": ">"}, {"lzw": True}]


@pytest.mark.parametrize("samples", [3, 4])
@pytest.mark.parametrize("layout", range(len(RGB_LAYOUTS)))
def test_an_rgb_tiff_decoded_in_strips_equals_the_whole_decode(tmp_path, small_thresholds, layout, samples) -> None:
    rgb = np.random.default_rng(layout).integers(0, 256, (70, 90, samples), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    extras = {"extrasamples": [2]} if samples == 4 else {}
    if "lzw" in RGB_LAYOUTS[layout]:  # tifffile reads LZW only with imagecodecs: the Pillow fallback
        Image.fromarray(rgb).save(path, compression="tiff_lzw")
    else:
        tifffile.imwrite(path, rgb, photometric="rgb", **RGB_LAYOUTS[layout], **extras)
    _same_as_whole_decode(path)
