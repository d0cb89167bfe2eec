"""What only the SQLite backend has: the file, WAL, PRAGMA user_version migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nmid_desktop.core.errors import LibraryError
from nmid_desktop.core.store import DB_NAME, SCHEMA_VERSION, open_library
from nmid_desktop.core.store import sqlite as sqlite_backend


def test_new_library_is_wal_with_schema_version(tmp_path: Path) -> None:
    store = open_library(tmp_path / "new" / "lib")
    conn = store._conn()
    assert (tmp_path / "new" / "lib" / DB_NAME).is_file()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4  # 3: class keys, 4: browser queue keys
    assert store.labels_version() == 0
    store.close()
    with pytest.raises(LibraryError, match="closed"):
        store.classes()


def test_open_without_create_needs_a_library(tmp_path: Path) -> None:
    with pytest.raises(LibraryError, match="no library"):
        open_library(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()
    open_library(tmp_path / "lib").close()
    open_library(tmp_path / "lib", create=False).close()


def test_not_a_database_and_file_instead_of_folder(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / DB_NAME).write_text("hello, I am not SQLite" * 100)
    with pytest.raises(LibraryError, match="not a usable library"):
        open_library(tmp_path / "lib")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LibraryError, match="is a file"):
        open_library(tmp_path / "afile")


def test_library_newer_than_code_is_refused(tmp_path: Path) -> None:
    open_library(tmp_path / "lib").close()
    conn = sqlite3.connect(tmp_path / "lib" / DB_NAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(LibraryError, match="newer than this nmid-desktop"):
        open_library(tmp_path / "lib")


def test_pending_migrations_apply_in_order_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    open_library(tmp_path / "lib").close()
    v2 = ["CREATE TABLE extra (x INTEGER)", "INSERT INTO extra VALUES (2)"]
    broken_v3 = ["CREATE TABLE extra3 (x INTEGER)", "THIS IS NOT SQL"]
    monkeypatch.setattr(sqlite_backend, "MIGRATIONS", [*sqlite_backend.MIGRATIONS, v2, broken_v3])
    monkeypatch.setattr(sqlite_backend, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    with pytest.raises(LibraryError, match="cannot upgrade"):
        open_library(tmp_path / "lib")
    conn = sqlite3.connect(tmp_path / "lib" / DB_NAME)
    # All pending migrations share one transaction: v2 is rolled back with the broken v3.
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'extra%'").fetchall() == []
    conn.close()
    monkeypatch.setattr(sqlite_backend, "MIGRATIONS", [*sqlite_backend.MIGRATIONS[: SCHEMA_VERSION + 1]])
    monkeypatch.setattr(sqlite_backend, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    store = open_library(tmp_path / "lib")
    assert [tuple(r) for r in store._conn().execute("SELECT x FROM extra")] == [(2,)]
    assert store._conn().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    store.close()


def test_a_v1_library_upgrades_to_many_user_schema_and_keeps_its_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"v1 image"
    (tmp_path / "a.png").write_bytes(content)
    import hashlib

    with monkeypatch.context() as old:
        old.setattr(sqlite_backend, "MIGRATIONS", sqlite_backend.MIGRATIONS[:1])
        old.setattr(sqlite_backend, "SCHEMA_VERSION", 1)
        store = open_library(tmp_path / "lib")
        # v1 has no label_version / user_name columns: write its rows the way v1 code did.
        conn = store._conn()
        image_id, _ = store.add_image(tmp_path / "a.png", sha256=hashlib.sha256(content).hexdigest(), page=0,
                                      n_pages=1, width=4, height=4, dtype="uint8")
        conn.execute("INSERT INTO classes (name, created_at) VALUES ('k', 'then')")
        conn.execute(
            """INSERT INTO label_events (kind, image_id, old_review, new_review, old_prov, new_prov, source, actor, at,
               new_class_id, new_label) VALUES ('label', ?, 'pending', 'accepted', ?, ?, 'expert', 'ann', 'then', 1, 'k')""",
            (image_id, '{"source": null}', '{"source": "expert"}'),
        )
        conn.execute("UPDATE images SET class_id = 1, review = 'accepted', label_source = 'expert' WHERE id = ?",
                     (image_id,))
        store.close()
    store = open_library(tmp_path / "lib", user="bob")
    assert store._conn().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.get_image(image_id).label == "k" and store.get_image(image_id).label_version == 0
    assert store.undo().image_id == image_id  # one person's file: the old change is undoable
    assert store.get_image(image_id).label is None
    store.close()
