"""``nmid library copy``: SQLite -> PostgreSQL -> SQLite keeps everything; interrupted, nothing half valid."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from library_fixture import Library, make_library

from nmid_desktop.core.errors import LibraryError
from nmid_desktop.core.store import DescriptionRecord, DescriptionRow, PredictionRecord, Store
from nmid_desktop.core.store.copy import copy_library


def _fill(store: Store, folder: Path) -> None:
    """A small library using every table: labels with history and undo, merge, split, embeddings ..."""
    folder.mkdir()
    ids = []
    for i in range(12):
        content = f"img-{i}".encode()
        path = folder / f"img{i}.tif"
        path.write_bytes(content)
        image_id, _ = store.add_image(
            path, sha256=hashlib.sha256(content).hexdigest(), page=0, n_pages=1, width=10, height=8, dtype="uint16",
            pixel_size_m=1.25e-9 * (i + 1), crop_box=(0, 0, 10, 6), copy=i != 11,
        )
        ids.append(image_id)
    for i, image_id in enumerate(ids[:9]):
        store.set_label(image_id, ["pores", "wires", "dots"][i % 3], source="lmm" if i % 2 else "expert",
                        model="m" if i % 2 else None, confidence=0.5 + i / 100 if i % 2 else None, actor="ann")
    store.set_review(ids[1], "accepted", actor="bob")
    store.set_review(ids[2], "rejected")
    store.merge_classes("dots", "pores", actor="ann")
    store.set_label(ids[0], "cracks", source="expert")
    store.undo()
    store.update_class("wires", description="thin", color="#00ff00")
    store.set_split({ids[0]: "train", ids[1]: "test", ids[3]: "val"})
    rng = np.random.default_rng(1)
    store.put_embeddings("enc@1", ids, rng.standard_normal((12, 16)).astype(np.float32))
    store.add_prediction(PredictionRecord(ids[4], "knn", "pores", [("pores", 0.7), ("wires", 0.3)], 0.7,
                                          demo_ids=[ids[0]]))
    store.add_description(DescriptionRecord(ids[5], "m", "v1", [DescriptionRow("basics", "What?", "ZnO")]))
    store.record_usage(kind="describe", model="m", tokens_in=5, tokens_out=7, cost_usd=0.125, images=1)
    store.set_meta("note", {"k": [1, 2]})


def _snapshot(store: Store) -> dict[str, Any]:
    images = []
    for im in store.iter_images():
        row = dict(im.__dict__)
        path = Path(row.pop("path"))
        row["file"] = path.read_bytes() if im.stored else str(path)
        images.append(row)
    ids, vectors = store.get_embeddings("enc@1")
    ids_all = [im["id"] for im in images]
    return {
        "images": images,
        "classes": store.classes(),
        "history": store.history(limit=10_000),
        "split": store.get_split(),
        "embeddings": (ids.tolist(), vectors.tobytes()),
        "predictions": [store.predictions(i) for i in ids_all],
        "descriptions": [store.descriptions(i) for i in ids_all],
        "cost": store.total_cost(),
        "note": store.get_meta("note"),
        "labels_version": store.labels_version(),
        "labelled": store.labelled(),
    }


def test_copy_sqlite_to_postgresql_and_back_is_equal(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    first = make_library("sqlite", tmp_path, request, "first")
    shared = make_library("postgresql", tmp_path, request, "shared")
    back = make_library("sqlite", tmp_path, request, "back")
    src = first.open()
    _fill(src, tmp_path / "originals")
    expected = _snapshot(src)
    pg = shared.open()
    report = _drive(copy_library(src, pg))
    assert report.rows["images"] == 12 and report.files_copied == 11 and report.referenced == 1
    assert _snapshot(pg) == expected
    # Ids keep counting after the copied ones, and the copy is a working library.
    event = pg.set_label(expected["images"][11]["id"], "new", source="expert")
    assert event.id > max(e.id for e in expected["history"])
    pg.undo()
    dst = back.open()
    _drive(copy_library(pg, dst))
    assert _snapshot(dst) == _snapshot(pg)
    with pytest.raises(LibraryError, match="not empty"):
        _drive(copy_library(src, dst))
    for store in (src, pg, dst):
        store.close()


@pytest.mark.parametrize("target", ["sqlite", "postgresql"])
def test_interrupted_copy_leaves_the_destination_empty_and_unusable(
    target: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    first = make_library("sqlite", tmp_path, request, "first")
    dest: Library = make_library(target, tmp_path, request, "dest")
    src = first.open()
    _fill(src, tmp_path / "originals")
    dst = dest.open()
    job = copy_library(src, dst)
    for _ in range(3):  # a few chunks in, then cancelled (what Ctrl+C or the window's Cancel does)
        next(job)
    job.close()
    dst.close()
    with pytest.raises(LibraryError, match="interrupted"):
        dest.open()
    half = dest.open(allow_incomplete=True)
    assert half.count_images() == 0 and half.classes() == [] and half.history() == []
    _drive(copy_library(src, half))  # copying again completes it
    half.close()
    assert dest.open().count_images() == 12
    src.close()


def test_cli_copy_and_stats_show_the_url_redacted(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    first = make_library("sqlite", tmp_path, request, "first")
    shared = make_library("postgresql", tmp_path, request, "shared")
    src = first.open()
    _fill(src, tmp_path / "originals")
    src.close()
    url = shared.location.replace("postgres@", "postgres:NotShown42@")  # trust auth ignores it
    cmd = [sys.executable, "-m", "nmid_desktop.cli"]
    out = subprocess.run(
        [*cmd, "library", "copy", first.location, url, "--dst-folder", str(shared.shared)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "images 12" in out.stdout and "NotShown42" not in out.stdout + out.stderr
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "settings.toml").write_text(f"shared_folder = {str(shared.shared)!r}\n")
    env = {**__import__("os").environ, "NMID_CONFIG_DIR": str(tmp_path / "cfg")}
    stats = subprocess.run([*cmd, "stats", "--library", url], capture_output=True, text=True, timeout=120, env=env)
    assert stats.returncode == 0, stats.stderr
    assert "library: postgresql://postgres:***@127.0.0.1" in stats.stdout and "NotShown42" not in stats.stdout
    assert "images: 12 (9 labelled" in stats.stdout


def _drive(job: Any) -> Any:
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value


def test_a_copied_library_keeps_index_plans_while_predictions_grow(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The copy's ANALYZE skips empty tables: "analyzed, no rows" froze a scan into prepared plans.

    The window's sessions plan each prepared statement once (``force_generic_plan``). Planned on
    a ``predictions`` table that statistics said was empty, ``query_start``'s newest-answer lookup
    scanned the table, and every query adds a row to it.
    """
    import re

    first = make_library("sqlite", tmp_path, request, "first")
    shared = make_library("postgresql", tmp_path, request, "shared")
    src = first.open()
    folder = tmp_path / "originals"
    folder.mkdir()
    for i in range(40):
        path = folder / f"img{i}.tif"
        path.write_bytes(f"img-{i}".encode())
        image_id, _ = src.add_image(path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), page=0, n_pages=1,
                                    width=10, height=8, dtype="uint8", copy=False)
        src.set_label(image_id, "pores" if i % 2 else "wires", source="expert")
    pg = shared.open()
    _drive(copy_library(src, pg))
    conn = pg._conn()  # the store's own session, with its plan settings
    counter = iter(range(1, 10))
    sql = re.sub(r"\?", lambda _: f"${next(counter)}", type(pg)._QUERY_START)
    conn.execute(f"PREPARE start_lookup AS {sql}")
    conn.execute("EXECUTE start_lookup('enc@1', 'lmm', 1)")  # planned now, on the copy's statistics
    for k in range(300):
        pg.add_prediction(PredictionRecord(1 + k % 40, "knn", "pores", [("pores", 1.0)], 1.0))
    plan = "\n".join(str(r[0]) for r in conn.execute("EXPLAIN EXECUTE start_lookup('enc@1', 'lmm', 1)").fetchall())
    assert "Seq Scan on predictions" not in plan, plan
    assert pg.query_start(1, None).record.id == 1
    for store in (src, pg):
        store.close()
