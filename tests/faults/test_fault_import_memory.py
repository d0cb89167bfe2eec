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
