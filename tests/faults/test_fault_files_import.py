"""Files and import: links, loops, FIFOs, devices, unreadable folders, odd TIFFs, tiny images, CSV order.

Every non-regular file is reported and skipped, never read (a FIFO or /dev/zero would hang the
import); nothing is dropped without a word.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nmid_desktop.core.errors import ImageError
from nmid_desktop.core.fileio import check_regular_file, sha256_file
from nmid_desktop.core.images import probe_image, read_image
from nmid_desktop.core.importer import SKIPPED, import_csv, import_files, import_folder
from nmid_desktop.core.jobs import run_job
from nmid_desktop.core.store import open_library

pytestmark = pytest.mark.skipif(os.name != "posix", reason="FIFOs, devices and symlink loops are POSIX file kinds")


def png(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(path)
    return path


def run_bounded(job, seconds: float = 30.0):
    """Drive a job in a thread; fail (instead of hanging the suite) if it does not end in time."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = run_job(job)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the job did not end within {seconds} s (it hangs)"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture
def store(tmp_path: Path):
    s = open_library(tmp_path / "lib")
    yield s
    s.close()


def reasons(report) -> dict[str, str]:
    return {item.path.name: item.reason for item in report.items if item.status == SKIPPED}


# ----------------------------------------------------------------------------- non-regular files

def test_fifo_and_dev_zero_link_in_a_folder_are_reported_and_skipped(store, tmp_path) -> None:
    src = tmp_path / "src"
    png(src / "good.png")
    os.mkfifo(src / "pipe.png")
    os.symlink("/dev/zero", src / "zero.jpg")
    report = run_bounded(import_folder(store, src, layout="flat"))
    assert report.imported == 1
    found = reasons(report)
    assert "named pipe" in found["pipe.png"] and "character device" in found["zero.jpg"]


def test_fifo_and_dev_zero_given_directly_never_hang(store, tmp_path) -> None:
    os.mkfifo(tmp_path / "pipe.tif")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    report = run_bounded(import_files(store, [tmp_path / "pipe.tif", tmp_path / "zero.png"]), 15)
    assert report.skipped == 2 and report.imported == 0
    assert all("not a regular file" in r for r in reasons(report).values())


@pytest.mark.parametrize("make", ["fifo", "zero"])
def test_readers_and_the_hash_refuse_non_regular_files_at_once(tmp_path, make: str) -> None:
    path = tmp_path / "x.png"
    if make == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    for call in (check_regular_file, sha256_file, probe_image, read_image):
        done = threading.Event()
        errors: list[BaseException] = []

        def target(call=call, errors=errors, done=done) -> None:
            try:
                call(path)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            done.set()

        threading.Thread(target=target, daemon=True).start()
        assert done.wait(10), f"{call.__name__} hangs on a {make}"
        assert errors and isinstance(errors[0], ImageError) and "not a regular file" in str(errors[0])


def test_classify_and_similar_refuse_a_fifo_with_one_line(tmp_path) -> None:
    os.mkfifo(tmp_path / "q.png")
    for command in (["classify", str(tmp_path / "q.png")], ["similar", str(tmp_path / "q.png")]):
        run = subprocess.run(
            [sys.executable, "-m", "nmid_desktop.cli", *command, "--library", str(tmp_path / "lib")],
            capture_output=True, text=True, timeout=60,
        )
        assert run.returncode == 1 and "named pipe" in run.stderr and "Traceback" not in run.stderr


# ----------------------------------------------------------------------------- links and folders

def test_a_symlink_loop_is_reported_and_the_rest_imported(store, tmp_path) -> None:
    src = tmp_path / "src"
    png(src / "a" / "one.png")
    os.symlink("..", src / "a" / "back-up")  # a folder loop
    os.symlink("self.png", src / "self.png")  # a file that links to itself
    report = run_bounded(import_folder(store, src, layout="flat"))
    assert report.imported == 1
    found = reasons(report)
    assert "symbolic link loop" in found["self.png"]
    assert "back-up" in found and "already imported" in found["back-up"]


def test_a_broken_link_is_reported(store, tmp_path) -> None:
    src = tmp_path / "src"
    png(src / "good.png")
    os.symlink(tmp_path / "gone.png", src / "dangling.png")
    report = run_bounded(import_folder(store, src, layout="flat"))
    assert "broken symbolic link" in reasons(report)["dangling.png"]


def test_a_symlinked_class_folder_is_followed(store, tmp_path) -> None:
    outside = tmp_path / "elsewhere" / "scratches"
    png(outside / "s1.png", seed=1)
    png(outside / "s2.png", seed=2)
    src = tmp_path / "src"
    png(src / "crazing" / "c1.png", seed=3)
    os.symlink(outside, src / "scratches")
    report = run_bounded(import_folder(store, src, layout="imagefolder"))
    assert report.imported == 3
    labels = sorted(im.label for im in store.images())
    assert labels == ["crazing", "scratches", "scratches"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder: permissions cannot be denied to it")
def test_an_unreadable_sub_folder_is_reported_and_the_rest_imported(store, tmp_path) -> None:
    src = tmp_path / "src"
    png(src / "ok" / "a.png")
    png(src / "locked" / "b.png", seed=1)
    (src / "locked").chmod(0)
    try:
        report = run_bounded(import_folder(store, src, layout="flat"))
    finally:
        (src / "locked").chmod(0o755)
    assert report.imported == 1 and "permission denied" in reasons(report)["locked"]


def test_a_folder_that_vanishes_before_listing_is_reported(store, tmp_path) -> None:
    src = tmp_path / "src"
    png(src / "a.png")
    (src / "sub").mkdir()
    job = import_files(store, [src, tmp_path / "never-there"])
    report = run_bounded(job)
    assert report.imported == 1 and report.skipped == 1


# ----------------------------------------------------------------------------- TIFF pages, tiny images

def test_pages_of_mixed_types_keep_their_own_dtype(store, tmp_path) -> None:
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
        tif.write(np.random.default_rng(0).random((64, 64)).astype(np.float32))
        tif.write(np.full((64, 64), 7, np.uint8))
    report = run_bounded(import_files(store, [path]))
    assert report.imported == 3
    assert [im.dtype for im in sorted(store.images(), key=lambda im: im.page)] == ["uint16", "float32", "uint8"]


def test_a_truncated_multi_page_tiff_says_pages_are_missing(store, tmp_path) -> None:
    whole = tmp_path / "whole.tif"
    with tifffile.TiffWriter(whole) as tif:
        for i in range(3):
            tif.write(np.full((256, 256), i * 50, np.uint8))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    report = run_bounded(import_files(store, [cut]))
    assert report.imported >= 1
    assert any("truncated" in item.reason and "missing" in item.reason for item in report.items)


@pytest.mark.parametrize("size", [(1, 50), (50, 1), (1, 1), (3, 2)])
def test_tiny_images_are_imported_and_marked(store, tmp_path, size) -> None:
    path = png(tmp_path / "tiny.png", size)
    report = run_bounded(import_files(store, [path]))
    assert report.imported == 1
    assert "too small" in report.items[0].reason
    assert (store.images()[0].width, store.images()[0].height) == size


def test_a_one_pixel_wide_tiff_is_imported(store, tmp_path) -> None:
    path = tmp_path / "line.tif"
    tifffile.imwrite(path, np.arange(100, dtype=np.uint16).reshape(100, 1))
    report = run_bounded(import_files(store, [path]))
    assert report.imported == 1 and store.images()[0].width == 1


# ----------------------------------------------------------------------------- CSV manifests

@pytest.mark.parametrize(
    "header",
    ["label,path", "class;file_name", "sha256,label,note,path", "Label,Image_Path"],
)
def test_a_manifest_header_in_any_order_is_understood(store, tmp_path, header: str) -> None:
    png(tmp_path / "imgs" / "a.png", seed=1)
    png(tmp_path / "imgs" / "b.png", seed=2)
    sep = ";" if ";" in header else ","
    names = [n.lower() for n in header.split(sep)]
    rows = []
    for name, label in (("imgs/a.png", "crazing"), ("imgs/b.png", "pitted")):
        values = {"label": label, "class": label, "path": name, "file_name": name, "image_path": name}
        rows.append(sep.join(values.get(n, "x") for n in names))
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    report = run_bounded(import_csv(store, manifest))
    assert report.imported == 2, [(i.path, i.reason) for i in report.items]
    assert sorted((im.original_name, im.label) for im in store.images()) == [("a.png", "crazing"), ("b.png", "pitted")]
