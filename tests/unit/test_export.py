"""Dataset export: ImageFolder tree, manifests with provenance, fixed stratified split, safety."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.export import assign_split, export_dataset
from nmid_desktop.core.importer import import_files
from nmid_desktop.core.jobs import run_job
from nmid_desktop.core.store import open_library


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 16), dtype=np.uint8)).save(path)
    return path


def _fill(store, folder: Path, classes: dict[str, int], seed: int = 0) -> dict[str, list[int]]:
    ids: dict[str, list[int]] = {}
    for k, (name, n) in enumerate(classes.items()):
        paths = [_png(folder / f"s{seed}" / f"c{k}" / f"img_{i}.png", seed * 10_000 + k * 1000 + i) for i in range(n)]
        report = run_job(import_files(store, paths, label=name))
        ids[name] = [item.image_id for item in report.items]
    return ids


@pytest.fixture
def store(tmp_path: Path):
    s = open_library(tmp_path / "lib")
    yield s
    s.close()


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def test_export_tree_manifests_and_provenance(store, tmp_path: Path) -> None:
    ids = _fill(store, tmp_path / "src", {"pores": 20, "wires": 20})
    store.set_label(ids["pores"][0], "pores", source="lmm", model="gpt-x", prompt_version="v7", confidence=0.9,
                    actor="batch")
    store.set_review(ids["pores"][0], "accepted", actor="ann")
    out = tmp_path / "out"
    report = run_job(export_dataset(store, out, seed=3))
    assert report.n_images == 40 and report.newly_assigned == 40 and not report.skipped
    for split, expected in (("train", 14), ("val", 3), ("test", 3)):
        assert report.counts[split] == {"pores": expected, "wires": expected}
    rows = _manifest(out)
    with (out / "manifest.csv").open(encoding="utf-8") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert len(rows) == len(csv_rows) == 40
    for row in rows:
        path = out / row["file"]
        assert path.is_file() and path.parts[-3] == row["split"] and path.parts[-2] == row["class"]
        assert path.read_bytes() == store.get_image(row["id"]).path.read_bytes()
    lmm = next(r for r in rows if r["id"] == ids["pores"][0])
    assert (lmm["label_source"], lmm["model"], lmm["prompt_version"], lmm["confidence"], lmm["actor"]) == (
        "lmm", "gpt-x", "v7", 0.9, "batch"
    )
    assert lmm["crop_box"] == [0, 0, 16, 12] and lmm["synthetic"] is False and lmm["review"] == "accepted"
    assert json.loads((out / "classes.json").read_text())["pores"]["name"] == "pores"
    assert store.get_split() == {r["id"]: r["split"] for r in rows}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folder left


def test_split_is_stable_and_test_set_fixed_as_the_library_grows(store, tmp_path: Path) -> None:
    _fill(store, tmp_path / "src", {"a": 30, "b": 10})
    run_job(export_dataset(store, tmp_path / "e1"))
    first = store.get_split()
    first_test = {i for i, s in first.items() if s == "test"}
    run_job(export_dataset(store, tmp_path / "e2", seed=99, split=(0.5, 0.25, 0.25)))
    assert store.get_split() == first  # nothing moves, whatever the new seed and fractions
    added = _fill(store, tmp_path / "src", {"a": 20}, seed=1)
    report = run_job(export_dataset(store, tmp_path / "e3"))
    split = store.get_split()
    assert report.newly_assigned == 20
    assert all(split[i] == s for i, s in first.items())
    assert first_test <= {i for i, s in split.items() if s == "test"}
    per_class_test = Counter(r["class"] for r in _manifest(tmp_path / "e3") if r["split"] == "test")
    # Largest remainder: a 30 -> (21, 5, 4), then 50 -> (35, 8, 7); b 10 -> (7, 2, 1) (ties go to val).
    assert per_class_test == {"a": 7, "b": 1}
    assert {split[i] for i in added["a"]} <= {"train", "val", "test"}


def test_assign_split_is_seeded_stratified_and_keeps_existing() -> None:
    images = [(i, "a" if i < 70 else "b", False) for i in range(100)]
    one, new = assign_split(images, {}, (0.7, 0.15, 0.15), seed=1)
    assert new == 100 and one == assign_split(images, {}, (0.7, 0.15, 0.15), seed=1)[0]
    assert one != assign_split(images, {}, (0.7, 0.15, 0.15), seed=2)[0]
    assert Counter(s for i, s in one.items() if i < 70) == {"train": 49, "val": 10, "test": 11} or Counter(
        s for i, s in one.items() if i < 70
    ) == {"train": 49, "val": 11, "test": 10}
    assert Counter(s for i, s in one.items() if i >= 70) == {"train": 21, "val": 4, "test": 5} or Counter(
        s for i, s in one.items() if i >= 70
    ) == {"train": 21, "val": 5, "test": 4}
    existing = dict.fromkeys(range(20), "test")  # a skewed earlier test set stays as it is
    two, new = assign_split(images, existing, seed=0)
    assert new == 80 and all(two[i] == "test" for i in range(20))
    assert sum(1 for i in range(20, 70) if two[i] == "test") == 0
    with pytest.raises(NmidError, match="split"):
        assign_split(images, {}, (0.0, 0.5, 0.5))
    with pytest.raises(NmidError, match="split"):
        assign_split(images, {}, (0.7, -0.1, 0.4))


def test_synthetic_only_in_train_rejected_left_out_pending_optional(store, tmp_path: Path) -> None:
    ids = _fill(store, tmp_path / "src", {"a": 10})
    syn_ids = []
    for k in range(6):
        path = _png(tmp_path / "syn" / f"s{k}.png", 500 + k)
        image_id, _ = store.add_image(path, sha256=__import__("hashlib").sha256(path.read_bytes()).hexdigest(),
                                      page=0, n_pages=1, width=16, height=12, dtype="uint8", synthetic=True,
                                      source_image_id=ids["a"][0])
        store.set_label(image_id, "a", source="synthetic", model="gpt-image-1", review="accepted")
        syn_ids.append(image_id)
    store.set_review(ids["a"][1], "rejected")
    store.set_label(ids["a"][2], "a", source="local", confidence=0.55)  # pending
    report = run_job(export_dataset(store, tmp_path / "out", split=(0.4, 0.3, 0.3)))
    rows = {r["id"]: r for r in _manifest(tmp_path / "out")}
    assert ids["a"][1] not in rows and ids["a"][2] not in rows
    assert all(rows[i]["split"] == "train" and rows[i]["synthetic"] for i in syn_ids)
    assert rows[syn_ids[0]]["source_image_id"] == ids["a"][0]
    assert report.n_images == 8 + 6
    with_pending = run_job(export_dataset(store, tmp_path / "out2", include_pending=True))
    assert with_pending.n_images == 9 + 6


def test_hostile_class_names_stay_inside_and_do_not_collide(store, tmp_path: Path) -> None:
    names = ["CON", "pores", "Pores", "a:b", "a?b", "trailing.", " x ", "nul.txt"]
    _fill(store, tmp_path / "src", dict.fromkeys(names, 3))
    out = tmp_path / "out"
    run_job(export_dataset(store, out, split=(1, 0, 0)))
    rows = _manifest(out)
    folders = {r["class"]: Path(r["file"]).parts[1] for r in rows}
    assert len(folders) == len(set(names)) - 0 and len({f.casefold() for f in folders.values()}) == len(folders)
    assert folders["CON"] == "_CON" and folders["trailing."] == "trailing"
    for row in rows:
        assert (out / row["file"]).resolve().is_relative_to(out.resolve())
    listed = {p.name for p in (out / "train").iterdir() if p.is_dir()}  # beside metadata.jsonl
    assert listed == set(folders.values())
    mapping = json.loads((out / "classes.json").read_text(encoding="utf-8"))
    assert {v["name"] for v in mapping.values()} == {n.strip() for n in names}


def test_refuses_non_empty_target_and_cancel_leaves_nothing(store, tmp_path: Path) -> None:
    _fill(store, tmp_path / "src", {"a": 12})
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(NmidError, match="not empty"):
        next(export_dataset(store, busy))
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    job = export_dataset(store, tmp_path / "out")
    for _ in range(5):
        next(job)
    job.close()
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert store.get_split() == {}  # a cancelled export assigns nothing
    (tmp_path / "empty").mkdir()
    assert run_job(export_dataset(store, tmp_path / "empty")).n_images == 12


def test_link_modes_and_multipage_pages(store, tmp_path: Path) -> None:
    _fill(store, tmp_path / "src", {"a": 3})
    stack = (np.arange(2 * 8 * 10, dtype=np.uint16).reshape(2, 8, 10) * 300)
    tif = tmp_path / "stack.tif"
    with tifffile.TiffWriter(tif) as writer:
        for page in stack:
            writer.write(page, photometric="minisblack")
    run_job(import_files(store, [tif], label="stack"))
    hard = run_job(export_dataset(store, tmp_path / "hard", copy_mode="hardlink", split=(1, 0, 0)))
    rows = _manifest(tmp_path / "hard")
    png = next(r for r in rows if r["class"] == "a")
    assert os.stat(tmp_path / "hard" / png["file"]).st_ino == os.stat(store.get_image(png["id"]).path).st_ino
    pages = sorted((r for r in rows if r["class"] == "stack"), key=lambda r: r["page"])
    assert [Path(r["file"]).name.endswith(f"_p{r['page']}.tif") for r in pages] == [True, True]
    for r in pages:
        data = tifffile.imread(tmp_path / "hard" / r["file"])
        assert data.dtype == np.uint16 and np.array_equal(data, stack[r["page"]])
    assert hard.n_images == 5
    run_job(export_dataset(store, tmp_path / "soft", copy_mode="symlink"))
    first = _manifest(tmp_path / "soft")[0]
    assert (tmp_path / "soft" / first["file"]).is_symlink()
    with pytest.raises(NmidError, match="copy mode"):
        next(export_dataset(store, tmp_path / "x", copy_mode="move"))
