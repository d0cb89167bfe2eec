"""Importing folders, CSV manifests and dropped files: per-file report, duplicates, bad files, cancel."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nmid_desktop.core.databar import find_micrograph_box
from nmid_desktop.core.errors import LabelError, NmidError
from nmid_desktop.core.images import read_image
from nmid_desktop.core.importer import ImportReport, import_csv, import_files, import_folder
from nmid_desktop.core.jobs import Progress, run_job
from nmid_desktop.core.store import ImageFilter, open_library


def _png(path: Path, seed: int, size: tuple[int, int] = (24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(path)
    return path


def _imagefolder(root: Path, classes: dict[str, int], seed: int = 0) -> list[Path]:
    paths = []
    for k, (name, n) in enumerate(sorted(classes.items())):
        for i in range(n):
            paths.append(_png(root / name / f"{name}_{i}.png", seed * 1000 + k * 100 + i))
    return paths


@pytest.fixture
def store(tmp_path: Path):
    s = open_library(tmp_path / "lib")
    yield s
    s.close()


def _run(job) -> tuple[ImportReport, list[Progress]]:
    progress: list[Progress] = []
    report = run_job(job, progress.append)
    return report, progress


def test_imagefolder_import_labels_and_reports_every_file(store, tmp_path: Path) -> None:
    paths = _imagefolder(tmp_path / "data", {"wires": 3, "pores": 2})
    report, progress = _run(import_folder(store, tmp_path / "data"))
    assert (report.imported, report.duplicates, report.skipped) == (5, 0, 0)
    assert [p.done for p in progress] == [1, 2, 3, 4, 5] and {p.total for p in progress} == {5}
    assert [item.path for item in report.items] == sorted(paths)
    assert {c.name: c.count for c in store.classes()} == {"pores": 2, "wires": 3}
    image = store.get_image(report.items[0].image_id)
    assert image.label == "pores" and image.label_source == "import" and image.review == "accepted"
    assert image.stored and image.path.read_bytes() == paths[0].read_bytes()
    assert image.sha256 == hashlib.sha256(paths[0].read_bytes()).hexdigest()
    assert (image.width, image.height, image.dtype) == (24, 20, "uint8")
    assert image.crop_box == find_micrograph_box(read_image(paths[0]).view8)
    assert store.history(image.id)[0].source == "import"


def test_flat_and_auto_layouts(store, tmp_path: Path) -> None:
    _png(tmp_path / "flat" / "a.png", 1)
    _png(tmp_path / "flat" / "sub" / "b.png", 2)
    report, _ = _run(import_folder(store, tmp_path / "flat"))  # images at the top: flat
    assert report.imported == 2 and store.count_images(ImageFilter(unlabelled=True)) == 2
    _png(tmp_path / "flat2" / "c.png", 3)
    _png(tmp_path / "flat2" / "sub" / "d.png", 4)
    report, _ = _run(import_folder(store, tmp_path / "flat2", recursive=False))
    assert [i.path.name for i in report.items] == ["c.png"]
    report, _ = _run(import_folder(store, tmp_path / "flat2", layout="imagefolder"))
    assert {(i.path.name, i.status, i.label) for i in report.items} == {
        ("c.png", "duplicate", None), ("d.png", "imported", "sub")
    }
    with pytest.raises(NmidError, match="layout"):
        next(import_folder(store, tmp_path / "flat", layout="nested"))
    with pytest.raises(NmidError, match="not a folder"):
        next(import_folder(store, tmp_path / "nowhere"))


def test_duplicates_within_an_import_and_against_the_library(store, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _png(data / "a" / "one.png", 7)
    (data / "a" / "two.png").write_bytes(first.read_bytes())
    (data / "b" / "three.png").parent.mkdir(parents=True)
    (data / "b" / "three.png").write_bytes(first.read_bytes())
    _png(data / "b" / "four.png", 8)
    report, _ = _run(import_folder(store, data))
    by_name = {i.path.name: i for i in report.items}
    assert by_name["one.png"].status == "imported"
    assert by_name["two.png"].status == "duplicate" and by_name["two.png"].duplicate_of == str(first)
    assert by_name["two.png"].image_id == by_name["one.png"].image_id
    assert "labelled 'a'" in by_name["three.png"].reason  # same bytes, another class: said, not applied
    assert store.count_images() == 2

    again, _ = _run(import_folder(store, data))
    assert again.imported == 0 and again.duplicates == 4
    assert all(i.duplicate_of.startswith("library image") for i in again.items)


def test_duplicate_of_an_unlabelled_image_gets_the_label(store, tmp_path: Path) -> None:
    path = _png(tmp_path / "loose" / "x.png", 3)
    run_job(import_files(store, [path]))
    report, _ = _run(import_files(store, [path], label="pores"))
    assert report.items[0].status == "relabelled" and report.relabelled == 1
    assert store.get_image(report.items[0].image_id).label == "pores"
    report, _ = _run(import_files(store, [path], label="wires"))
    assert report.items[0].status == "duplicate" and "library label 'pores' kept" in report.items[0].reason
    with pytest.raises(LabelError):
        next(import_files(store, [path], label="../etc"))


def test_bad_files_are_skipped_with_reasons_and_never_stop_the_import(store, tmp_path: Path) -> None:
    data = tmp_path / "data" / "k"
    good = _png(data / "a_good.png", 1)
    (data / "b_text.png").write_text("this is not an image\n" * 10)
    (data / "c_empty.png").write_bytes(b"")
    truncated = _png(tmp_path / "big.png", 2, size=(200, 200)).read_bytes()
    (data / "d_truncated.png").write_bytes(truncated[: len(truncated) // 2])
    (data / "e_notes.txt").write_text("notes")
    (data / ".hidden.png").write_bytes(b"ignored")
    _png(data / "f_good.png", 3)
    report, _ = _run(import_folder(store, tmp_path / "data"))
    status = {i.path.name: (i.status, i.reason) for i in report.items}
    assert ".hidden.png" not in status
    assert status["a_good.png"][0] == status["f_good.png"][0] == "imported"
    for name in ("b_text.png", "c_empty.png", "d_truncated.png", "e_notes.txt"):
        assert status[name][0] == "skipped" and status[name][1], name
    assert "txt" in status["e_notes.txt"][1]
    assert store.count_images() == 2 and good.exists()


def test_pixel_limit_skips_large_images(store, tmp_path: Path) -> None:
    small = _png(tmp_path / "d" / "small.png", 1, size=(10, 10))
    big = _png(tmp_path / "d" / "big.png", 2, size=(100, 100))
    report, _ = _run(import_files(store, [small, big], max_pixels=500))
    assert [i.status for i in report.items] == ["imported", "skipped"]
    assert report.items[1].reason


def test_multipage_and_16bit_tiff_one_image_per_page(store, tmp_path: Path) -> None:
    stack = np.arange(3 * 16 * 20, dtype=np.uint16).reshape(3, 16, 20) * 13
    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as tif:
        for page in stack:
            tif.write(page, photometric="minisblack")
    report, _ = _run(import_files(store, [path], label="stack"))
    assert [(i.status, i.page) for i in report.items] == [("imported", 0), ("imported", 1), ("imported", 2)]
    images = store.images()
    assert [(im.page, im.n_pages, im.dtype, im.width, im.height) for im in images] == [
        (p, 3, "uint16", 20, 16) for p in range(3)
    ]
    assert len({im.sha256 for im in images}) == 1 and len({im.path for im in images}) == 1
    again, _ = _run(import_files(store, [path]))
    assert [i.status for i in again.items] == ["duplicate"] * 3


def test_csv_manifest(store, tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png", 1)
    _png(tmp_path / "imgs" / "b.png", 2)
    absolute = _png(tmp_path / "elsewhere" / "c.png", 3)
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "path,label\n"
        "imgs/a.png,pores\n"
        f"{absolute},wires\n"
        "imgs/b.png,\n"
        "imgs/missing.png,pores\n"
        "imgs/a.png,bad/label\n"
        "\n",
        encoding="utf-8",
    )
    report, _ = _run(import_csv(store, manifest))
    assert [(i.path.name, i.status, i.label) for i in report.items] == [
        ("a.png", "imported", "pores"),
        ("c.png", "imported", "wires"),
        ("b.png", "imported", None),
        ("missing.png", "skipped", "pores"),
        ("a.png", "skipped", None),
    ]
    assert report.items[3].reason == "file not found" and "invalid label" in report.items[4].reason
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text("imgs/b.png;wires\n", encoding="utf-8")
    report, _ = _run(import_csv(store, semicolons))
    assert report.items[0].status == "relabelled"
    with pytest.raises(NmidError, match="cannot read"):
        next(import_csv(store, tmp_path / "none.csv"))


def test_reference_mode_and_dropped_folder(store, tmp_path: Path) -> None:
    paths = _imagefolder(tmp_path / "drop", {"x": 2})
    report, _ = _run(import_files(store, [tmp_path / "drop"], label="dropped", copy=False))
    assert report.imported == 2
    image = store.get_image(report.items[0].image_id)
    assert not image.stored and image.path == paths[0] and image.label == "dropped"
    assert not (store.root / "images").exists()


def test_the_library_folder_itself_is_not_imported(tmp_path: Path) -> None:
    _imagefolder(tmp_path / "data", {"a": 2})
    with open_library(tmp_path / "data" / "lib") as store:
        run_job(import_folder(store, tmp_path / "data", layout="imagefolder"))
        report, _ = _run(import_folder(store, tmp_path / "data", layout="imagefolder"))
        assert all("lib" not in i.path.parts for i in report.items) and report.duplicates == 2


def test_cancel_keeps_the_files_done_and_reimport_completes(store, tmp_path: Path) -> None:
    _imagefolder(tmp_path / "data", {"a": 10, "b": 10})
    job = import_folder(store, tmp_path / "data", batch_size=1000, workers=2)
    for _ in range(7):
        next(job)
    job.close()  # what run_job does when the token is cancelled
    assert store.count_images() == 7
    assert store.count_images(ImageFilter(unlabelled=False)) == 7
    report, _ = _run(import_folder(store, tmp_path / "data"))
    assert (report.imported, report.duplicates) == (13, 7)
    assert store.count_images() == 20


def test_neu_sample_reports_the_byte_identical_pair(store, neu_dir: Path, tmp_path: Path) -> None:
    a, b = neu_dir / "patches" / "patches_101.jpg", neu_dir / "patches" / "patches_105.jpg"
    assert a.read_bytes() == b.read_bytes()
    others = [neu_dir / cls / f"{cls}_{i}.jpg" for cls in ("crazing", "scratches") for i in (1, 2)]
    report, _ = _run(import_files(store, [a, *others, b]))
    dup = [i for i in report.items if i.status == "duplicate"]
    assert len(dup) == 1 and dup[0].path == b and dup[0].duplicate_of == str(a)
    assert report.imported == 5
    image = store.get_image(report.items[0].image_id)
    assert (image.width, image.height, image.dtype) == (200, 200, "uint8")
