"""Export: content verified against the stored sha256, safe CSV, indices that agree across splits,
one metadata.jsonl for Hugging Face, an 8-bit model view, and no litter from killed exports."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nmid_desktop.core.export import clean_stale_partials, export_dataset
from nmid_desktop.core.importer import import_files
from nmid_desktop.core.jobs import run_job
from nmid_desktop.core.store import open_library


def png(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def store(tmp_path: Path):
    s = open_library(tmp_path / "lib")
    yield s
    s.close()


def accept_all(store) -> None:
    for image in store.images():
        store.set_review(image.id, "accepted")


def fill(store, tmp_path: Path, per_class: dict[str, int], *, copy: bool = True) -> None:
    seed = 0
    for label, n in per_class.items():
        paths = [png(tmp_path / "src" / label / f"{label}_{i}.png", seed := seed + 1) for i in range(n)]
        run_job(import_files(store, paths, label=label, copy=copy, detect_bar=False))
    accept_all(store)


# ----------------------------------------------------------------------------- content against sha256

def test_a_referenced_file_changed_after_import_is_reported_not_exported(store, tmp_path) -> None:
    fill(store, tmp_path, {"crazing": 3, "pitted": 3}, copy=False)
    changed = tmp_path / "src" / "crazing" / "crazing_0.png"
    png(changed, seed=999)  # new content under the old name
    report = run_job(export_dataset(store, tmp_path / "out"))
    assert len(report.mismatched) == 1 and report.n_images == 5
    assert any("content changed since import" in reason for _, reason in report.skipped)
    names = [p.name for p in (tmp_path / "out").rglob("*.png")]
    assert not any("crazing_0" in name for name in names)


@pytest.mark.parametrize("mode", ["hardlink", "symlink"])
def test_links_are_verified_too(store, tmp_path, mode: str) -> None:
    fill(store, tmp_path, {"a": 2}, copy=False)
    png(tmp_path / "src" / "a" / "a_1.png", seed=1234)
    report = run_job(export_dataset(store, tmp_path / "out", copy_mode=mode))
    assert len(report.mismatched) == 1 and report.n_images == 1


# ----------------------------------------------------------------------------- CSV formulas

def test_manifest_csv_cells_cannot_run_as_formulas(store, tmp_path) -> None:
    hostile = ["=HYPERLINK(\"evil\",\"y\")", "+cmd", "-2+3", "@SUM(A1)"]
    for i, stem in enumerate(hostile):
        path = png(tmp_path / "src" / f"{stem}.png", seed=i)
        run_job(import_files(store, [path], label="crazing", detect_bar=False))
    accept_all(store)
    run_job(export_dataset(store, tmp_path / "out"))
    with (tmp_path / "out" / "manifest.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(hostile)
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "@")) and not (value.startswith("-") and not value[1:2].isdigit())
    assert sorted(row["original_name"] for row in rows) == sorted("'" + s + ".png" for s in hostile)
    jsonl = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["original_name"] for r in jsonl) == sorted(s + ".png" for s in hostile)  # JSON keeps the truth


# ----------------------------------------------------------------------------- loaders

def test_torchvision_gives_each_class_the_same_index_in_every_split(store, tmp_path) -> None:
    from torchvision.datasets import ImageFolder

    # "rare" has 1 image: it lands in one split only, the others have no image of it.
    fill(store, tmp_path, {"crazing": 10, "inclusion": 10, "rare": 1})
    run_job(export_dataset(store, tmp_path / "out"))
    out = tmp_path / "out"
    expected = json.loads((out / "class_to_idx.json").read_text())
    seen = 0
    for split in ("train", "val", "test"):
        dataset = ImageFolder(str(out / split), allow_empty=True)
        assert dataset.class_to_idx == expected
        seen += len(dataset)
        for path, index in dataset.samples:
            assert Path(path).parent.name == dataset.classes[index]
    assert seen == 21


def test_exactly_one_metadata_file_per_split_where_hugging_face_looks(store, tmp_path) -> None:
    fill(store, tmp_path, {"crazing": 4, "pitted": 4})
    run_job(export_dataset(store, tmp_path / "out"))
    out = tmp_path / "out"
    metadata = sorted(p.relative_to(out).as_posix() for p in out.rglob("metadata.*"))
    assert metadata == ["test/metadata.jsonl", "train/metadata.jsonl", "val/metadata.jsonl"]
    rows = 0
    for split in ("train", "val", "test"):
        for line in (out / split / "metadata.jsonl").read_text().splitlines():
            row = json.loads(line)
            assert (out / split / row["file_name"]).is_file() and row["split"] == split
            assert {"sha256", "class", "label_source"} <= set(row)
            rows += 1
    assert rows == 8


def test_hugging_face_datasets_loads_every_split_with_provenance_and_one_label_order(store, tmp_path) -> None:
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is an optional test dependency (extra hf)")
    fill(store, tmp_path, {"crazing": 6, "pitted": 6, "rare": 1})
    run_job(export_dataset(store, tmp_path / "out"))
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "out"))
    assert set(loaded) == {"train", "validation", "test"}
    names = None
    total = 0
    for split in loaded.values():
        assert {"sha256", "class", "label_source"} <= set(split.column_names)
        total += len(split)
        feature = split.features.get("label")
        if feature is not None:
            names = names or feature.names
            assert feature.names == names
            for row in split:
                assert feature.names[row["label"]] == row["class"]
    assert total == 13


def test_the_8_bit_view_of_a_16_bit_tiff_loads_as_an_image_not_a_white_page(store, tmp_path) -> None:
    from torchvision.datasets import ImageFolder

    path = tmp_path / "src" / "deep.tif"
    path.parent.mkdir(parents=True)
    ramp = (np.linspace(1000, 3000, 64 * 64).reshape(64, 64)).astype(np.uint16)  # a dim 16-bit ramp
    tifffile.imwrite(path, ramp)
    run_job(import_files(store, [path], label="crazing", detect_bar=False))
    accept_all(store)
    run_job(export_dataset(store, tmp_path / "out", pixels="view8", split=(1, 0, 0)))
    dataset = ImageFolder(str(tmp_path / "out" / "train"), allow_empty=True)
    image, _ = dataset[0]
    values = np.asarray(image.convert("L"))
    assert values.min() < 30 and values.max() > 225  # the full range, not all white or black
    assert dataset.samples[0][0].endswith(".png")


def test_export_cli_takes_the_pixels_option(store, tmp_path) -> None:
    fill(store, tmp_path, {"a": 2})
    store.close()
    run = subprocess.run(
        [sys.executable, "-m", "nmid_desktop.cli", "export", str(tmp_path / "out"), "--pixels", "view8",
         "--library", str(tmp_path / "lib")],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert len(list((tmp_path / "out").rglob("*.png"))) == 2


# ----------------------------------------------------------------------------- killed exports

def test_a_killed_exports_partial_folder_is_removed_by_the_next_export(store, tmp_path) -> None:
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / ".out.partial-deadbeef"
    (leftover / "train").mkdir(parents=True)
    (leftover / ".nmid-export-owner").write_text(f"{socket.gethostname()} {dead.pid}\n")
    alive = tmp_path / ".other.partial-cafe0000"
    alive.mkdir()
    (alive / ".nmid-export-owner").write_text(f"{socket.gethostname()} {os.getpid()}\n")
    fill(store, tmp_path, {"a": 2})
    report = run_job(export_dataset(store, tmp_path / "out"))
    assert report.cleaned == 1 and not leftover.exists() and alive.exists()
    assert not (tmp_path / "out" / ".nmid-export-owner").exists()
    assert clean_stale_partials(tmp_path) == []
