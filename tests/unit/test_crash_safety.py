"""Kill a child process in the middle of an import or of label changes; the library must survive.

The child is really killed (SIGKILL on POSIX, TerminateProcess on Windows): no
``finally`` runs, no transaction is closed. Reopening must find an intact database,
a complete file behind every image row, every committed label, and a re-import
must complete the rest without duplicates.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nmid_desktop.core.demo import generate_demo
from nmid_desktop.core.importer import import_files, import_folder
from nmid_desktop.core.jobs import run_job
from nmid_desktop.core.store import DB_NAME, open_library

IMPORT_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from nmid_desktop.core.importer import import_folder
    from nmid_desktop.core.jobs import run_job
    from nmid_desktop.core.store import open_library

    store = open_library(Path(sys.argv[1]))

    def on_progress(progress):
        print(progress.done, flush=True)
        time.sleep(0.01)  # a slow disk: the parent's kill lands in the middle of a batch

    run_job(import_folder(store, Path(sys.argv[2]), batch_size=25, workers=2), on_progress)
    print("finished", flush=True)
    """
)

LABEL_CHILD = textwrap.dedent(
    """
    import itertools, sys
    from pathlib import Path
    from nmid_desktop.core.store import open_library

    store = open_library(Path(sys.argv[1]))
    ids = [image.id for image in store.images()]
    names = ["alpha", "beta", "gamma"]
    for n in itertools.count(1):
        image_id = ids[n % len(ids)]
        if n % 7 == 0:
            event = store.undo()
        elif n % 11 == 0:
            event = store.set_review(image_id, "rejected", actor="crash")
        else:
            event = store.set_label(image_id, names[n % 3], source="expert", actor="crash")
        print(n, event.id, flush=True)  # printed only after the change was committed
    """
)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    run_job(generate_demo(folder, per_class=60, seed=5, size=96))
    return folder


def _kill_after(argv: list[str], lines_wanted: int) -> list[str]:
    """Run a child, read its stdout until ``lines_wanted`` lines, then kill it hard."""
    proc = subprocess.Popen(
        [sys.executable, "-c", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    try:
        while len(lines) < lines_wanted:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=60)
    assert len(lines) >= lines_wanted, f"child ended early: {lines[-3:]} {err[-2000:]}"
    assert "finished" not in lines and proc.returncode != 0
    return lines


def _integrity(lib: Path) -> None:
    conn = sqlite3.connect(lib / DB_NAME)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


def test_kill_during_import_loses_nothing_committed(demo_folder: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lines = _kill_after([IMPORT_CHILD, str(lib), str(demo_folder)], lines_wanted=110)
    done = int(lines[-1])
    _integrity(lib)
    with open_library(lib) as store:
        images = store.images()
        # When file 110 was reported, the batches up to file 100 had been committed.
        assert 25 * ((done - 1) // 25) <= len(images) < 300
        for image in images:
            assert image.path.is_file() and hashlib.sha256(image.path.read_bytes()).hexdigest() == image.sha256
            assert image.label == Path(image.original_path).parent.name and image.review == "accepted"
            assert store.history(image.id)[0].source == "import"
        # No file under a final name is partial: every name is the hash of its content.
        for path in (lib / "images").rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
        before = len(images)
        report = run_job(import_folder(store, demo_folder))
        assert report.duplicates == before and report.imported == 300 - before and report.skipped == 0
        assert store.count_images() == 300
        assert [c.count for c in store.classes()] == [60] * 5
    _integrity(lib)


def test_kill_during_label_changes_keeps_every_committed_change(demo_folder: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    paths = sorted(demo_folder.rglob("*.png"))[:30]
    with open_library(lib) as store:
        run_job(import_files(store, paths))
    lines = _kill_after([LABEL_CHILD, str(lib)], lines_wanted=400)
    n, last_event = (int(v) for v in lines[-1].split())
    _integrity(lib)
    with open_library(lib) as store:
        events = store.history(limit=100_000)
        by_id = {e.id: e for e in events}
        assert last_event in by_id
        assert sum(1 for e in events if e.actor == "crash") >= n - n // 7
        for image in store.images():
            # The image's state is exactly what its latest effective history row says.
            history = store.history(image.id, limit=100_000)
            effective = next((e for e in history if not e.undone), None)
            assert image.label == (effective.new_label if effective else None)
            assert image.review == (effective.new_review if effective else "pending")
        # The undo stack survives the kill and still works.
        before = store.labels_version()
        assert store.undo() is not None and store.labels_version() == before + 1
