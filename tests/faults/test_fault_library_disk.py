"""The library and its disk: read-only, damaged, lost database, full disk, litter of killed copies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nmid_desktop.core.errors import LibraryError
from nmid_desktop.core.importer import import_files
from nmid_desktop.core.jobs import run_job
from nmid_desktop.core.store import open_library

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses chattr, rlimits and POSIX signals")


def nmid(*args: str, env: dict | None = None, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nmid_desktop.cli", *args], capture_output=True, text=True, timeout=120,
        env=env, preexec_fn=preexec,
    )


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A closed library of 6 labelled images."""
    root = tmp_path / "lib"
    src = tmp_path / "src"
    src.mkdir()
    paths = []
    for i in range(6):
        path = src / f"im{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 80), dtype=np.uint8)).save(path)
        paths.append(path)
    with open_library(root) as store:
        run_job(import_files(store, paths[:3], label="crazing", detect_bar=False))
        run_job(import_files(store, paths[3:], label="pitted", detect_bar=False))
        for image in store.images():
            store.set_review(image.id, "accepted")
    return root


def _chattr(flag: str, *paths: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True).returncode == 0


@pytest.fixture
def read_only(library: Path):
    """The library write-protected: as root only the immutable flag stops writes; else plain modes."""
    db = library / "library.sqlite"
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    if os.geteuid() == 0:
        if not _chattr("+i", db, library):
            pytest.skip("running as root on a file system without chattr +i: cannot make a read-only library")
        yield library
        _chattr("-i", db, library)
    else:
        db.chmod(0o444)
        library.chmod(0o555)
        yield library
        library.chmod(0o755)
        db.chmod(0o644)


# ----------------------------------------------------------------------------- read-only, damaged, lost

def test_a_read_only_library_can_run_stats_and_export(read_only: Path, tmp_path: Path) -> None:
    run = nmid("stats", "--library", str(read_only))
    assert run.returncode == 0, run.stderr
    assert "6" in run.stdout
    export = nmid("export", str(tmp_path / "out"), "--library", str(read_only), "--split", "1,0,0")
    assert "exported 6 images" in export.stdout or "read-only" in export.stderr  # the split cannot be stored


def test_a_read_only_library_refuses_changes_with_one_line(read_only: Path) -> None:
    run = nmid("label", "set", "1", "pitted", "--library", str(read_only))
    assert run.returncode == 1 and "read-only" in run.stderr and "Traceback" not in run.stderr


def _damage_data_pages(db: Path) -> None:
    data = bytearray(db.read_bytes())
    rng = np.random.default_rng(1)
    for i in range(len(data) // 2, len(data), 331):  # the second half: table pages, not the schema
        data[i] = int(rng.integers(0, 256))
    db.write_bytes(bytes(data))


def test_a_damaged_database_is_refused_for_changes(library: Path) -> None:
    db = library / "library.sqlite"
    with open_library(library) as store:
        with store.transaction():  # pages of notes at the end of the file, away from the images' rows
            for i in range(3000):
                store.set_meta(f"note-{i}", "n" * 200)
        store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _damage_data_pages(db)  # the old code still took `label set` on such a file
    run = nmid("label", "set", "1", "pitted", "--library", str(library))
    assert run.returncode == 1 and "damaged" in run.stderr and "Traceback" not in run.stderr
    with pytest.raises(LibraryError, match="damaged"):
        with open_library(library) as store:
            store.set_label(1, "pitted", source="expert")


@pytest.mark.parametrize("state", ["empty", "missing"])
def test_a_lost_database_beside_stored_images_is_not_recreated(library: Path, state: str) -> None:
    db = library / "library.sqlite"
    for extra in ("", "-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    if state == "empty":
        db.write_bytes(b"")
    for command in (["stats"], ["import", str(library.parent / "src")]):
        run = nmid(*command, "--library", str(library))
        assert run.returncode == 1 and "database was lost" in run.stderr, run.stdout + run.stderr
    assert (db.stat().st_size if db.exists() else 0) == 0  # nothing was created over it


# ----------------------------------------------------------------------------- full disk

def test_sqlite_disk_full_is_one_clear_error_and_loses_nothing_saved(library: Path) -> None:
    with open_library(library) as store:
        before = {im.id: im.label for im in store.images()}
        conn = store._conn()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
        with pytest.raises(LibraryError, match="disk holding the library .* is full"):
            with store.transaction():
                for i in range(2000):
                    store.set_meta(f"filler-{i}", "x" * 2000)
    with open_library(library) as store:
        assert {im.id: im.label for im in store.images()} == before
        assert store.get_meta("filler-0") is None


def _limit_file_size(limit: int):
    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_an_export_onto_a_full_disk_stops_cleanly(library: Path, tmp_path: Path) -> None:
    big = tmp_path / "src" / "big.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (400, 400), dtype=np.uint8)).save(big)
    with open_library(library) as store:
        run_job(import_files(store, [big], label="crazing", detect_bar=False))
        for image in store.images():
            store.set_review(image.id, "accepted")
    # The library's files are written; the export's copy of the 160 KB file passes the limit.
    run = nmid("export", str(tmp_path / "out"), "--library", str(library), preexec=_limit_file_size(100_000))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "is full (" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_an_import_onto_a_full_disk_reports_each_file(library: Path, tmp_path: Path) -> None:
    big = tmp_path / "big2.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (400, 400), dtype=np.uint8)).save(big)
    run = nmid("import", str(big), "--library", str(library), preexec=_limit_file_size(100_000))
    assert "Traceback" not in run.stderr
    assert "is full (" in (run.stdout + run.stderr)  # not just "File too large" (the path holds "full")


# ----------------------------------------------------------------------------- litter of killed copies

def test_temporary_copies_left_by_a_killed_import_are_removed_by_the_next(library: Path, tmp_path: Path) -> None:
    shard = next(p for p in (library / "images").iterdir() if p.is_dir())
    old = shard / (".%s.deadbeef.tmp" % ("a" * 64))
    old.write_bytes(b"half a copy")
    past = time.time() - 3600
    os.utime(old, (past, past))
    fresh = shard / (".%s.cafe0000.tmp" % ("b" * 64))  # another import may be writing this one now
    fresh.write_bytes(b"being written")
    new = tmp_path / "new.png"
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(new)
    with open_library(library) as store:
        run_job(import_files(store, [new]))
    assert not old.exists() and fresh.exists()
