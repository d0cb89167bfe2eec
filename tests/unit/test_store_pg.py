"""What a shared PostgreSQL library adds: many users, a shared folder, secrets, faults.

Every test runs on a real server (tests/pg_server.py); "users" are separate stores,
each with its own connections, as on separate PCs.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import psycopg
import pytest
from library_fixture import Library

from nmid_desktop.core.errors import LabelConflict, LibraryError, LibraryUnavailable, UndoConflict
from nmid_desktop.core.store import Store, open_library
from nmid_desktop.core.store.location import library_key, redact_text, redact_url
from nmid_desktop.core.store.pg_schema import SCHEMA_VERSION


def _add(store: Store, folder: Path, n: int, prefix: str = "img") -> list[int]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        content = f"{prefix}-{i}".encode()
        path = folder / f"{prefix}{i}.png"
        path.write_bytes(content)
        image_id, _ = store.add_image(
            path, sha256=hashlib.sha256(content).hexdigest(), page=0, n_pages=1, width=8, height=8, dtype="uint8"
        )
        ids.append(image_id)
    return ids


# -- many users ------------------------------------------------------------------------------


def test_later_writer_is_told_the_colleagues_label_and_both_are_in_history(pg_library: Library, tmp_path: Path) -> None:
    ann = pg_library.open(user="ann")
    bob = pg_library.open(user="bob")
    (image_id,) = _add(ann, tmp_path / "src", 1)
    seen_by_ann = ann.get_image(image_id).label_version
    seen_by_bob = bob.get_image(image_id).label_version
    bob.set_label(image_id, "pores", source="expert", expected_version=seen_by_bob)
    with pytest.raises(LabelConflict, match="bob") as info:
        ann.set_label(image_id, "cracks", source="expert", expected_version=seen_by_ann)
    assert info.value.their_label == "pores" and info.value.their_actor == "bob"
    assert "'pores'" in str(info.value) and "'cracks'" in str(info.value)
    assert ann.get_image(image_id).label == "pores"  # nothing lost, nothing overwritten
    history = ann.history(image_id)
    assert [(e.kind, e.new_label, e.actor) for e in history] == [("conflict", "cracks", "ann"), ("label", "pores", "bob")]
    # Told, ann decides again from the current version, and wins.
    ann.set_label(image_id, "cracks", source="expert", expected_version=info.value.label_version)
    assert bob.get_image(image_id).label == "cracks"


def test_undo_walks_ones_own_changes_and_refuses_over_a_colleague(pg_library: Library, tmp_path: Path) -> None:
    ann = pg_library.open(user="ann")
    bob = pg_library.open(user="bob")
    a, b = _add(ann, tmp_path / "src", 2)
    ann.set_label(a, "x", source="expert")
    bob.set_label(b, "y", source="expert")
    undone = ann.undo()  # ann's, although bob's change is newer
    assert undone is not None and undone.image_id == a and bob.get_image(b).label == "y"
    ann.redo()
    bob.set_label(a, "z", source="expert")  # bob overwrites ann's label
    version = ann.labels_version()
    with pytest.raises(UndoConflict, match="bob has since set it to 'z'") as info:
        ann.undo()
    assert info.value.their_label == "z"
    assert ann.get_image(a).label == "z" and ann.labels_version() == version  # refused: nothing changed
    assert bob.undo().image_id == a  # bob takes his back ...
    assert ann.get_image(a).label == "x"
    assert ann.undo().image_id == a  # ... and now ann's own undo is allowed
    assert bob.get_image(a).label is None
    assert ann.undo() is None and bob.undo().image_id == b


def test_other_clients_see_new_labels_through_changes_since(pg_library: Library, tmp_path: Path) -> None:
    ann = pg_library.open(user="ann")
    bob = pg_library.open(user="bob")
    ids = _add(ann, tmp_path / "src", 5)
    start = bob.labels_version()
    ann.set_label(ids[1], "k", source="expert")
    ann.set_label(ids[3], "k", source="lmm", model="m", confidence=0.5)
    changes = bob.changes_since(start)
    assert not changes.full and [(im.id, im.label, im.label_actor) for im in changes.images] == [
        (ids[1], "k", "ann"), (ids[3], "k", "ann")
    ]
    assert bob.changes_since(changes.version).images == []
    ann.rename_class("k", "kk")  # no image row changes: the buffer must reload
    assert bob.changes_since(changes.version).full


def test_a_waiting_client_is_woken_by_a_colleagues_label(pg_library: Library, tmp_path: Path) -> None:
    ann = pg_library.open(user="ann")
    bob = pg_library.open(user="bob")
    (image_id,) = _add(ann, tmp_path / "src", 1)
    since = bob.labels_version()
    started = time.monotonic()
    assert bob.wait_for_changes(since, timeout_s=0.3) == since  # nothing happened: the timeout
    assert 0.25 < time.monotonic() - started < 3
    woke: list[tuple[int, float]] = []

    def watch() -> None:
        t0 = time.monotonic()
        woke.append((bob.wait_for_changes(since, timeout_s=20), time.monotonic() - t0))

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.3)
    ann.set_label(image_id, "k", source="expert")
    watcher.join(timeout=25)
    (version, waited), = woke
    assert version > since and waited < 5  # woken by NOTIFY, not by the 20 s timeout
    assert [im.id for im in bob.changes_since(since).images] == [image_id]


def test_concurrent_writers_lose_nothing(pg_library: Library, tmp_path: Path) -> None:
    ids = _add(pg_library.open(), tmp_path / "src", 20)
    stores = [pg_library.open(user=f"u{k}") for k in range(4)]
    conflicts = [0] * 4

    def work(k: int) -> None:
        store = stores[k]
        for _ in range(3):
            for image_id in ids:
                version = store.get_image(image_id).label_version
                try:
                    store.set_label(image_id, f"c{k}", source="expert", expected_version=version)
                except LabelConflict:
                    conflicts[k] += 1

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check = stores[0]
    applied = [e for e in check.history(limit=10_000) if e.kind == "label"]
    refused = [e for e in check.history(limit=10_000) if e.kind == "conflict"]
    assert len(applied) + len(refused) == 4 * 3 * 20 and len(refused) == sum(conflicts)
    # Every image's version counts exactly its applied changes: no lost update.
    for image_id in ids:
        n = sum(1 for e in applied if e.image_id == image_id)
        assert check.get_image(image_id).label_version == n


def test_a_retried_write_is_not_applied_twice(pg_library: Library, tmp_path: Path) -> None:
    store = pg_library.open()
    (image_id,) = _add(store, tmp_path / "src", 1)
    args = (image_id, "k", "expert", "", None, None, None, None, None, "token-1")
    attempts = []

    def operation() -> object:
        attempts.append(store._set_label(*args))  # type: ignore[attr-defined]
        if len(attempts) == 1:  # committed, but the reply to COMMIT was lost with the connection
            raise LibraryUnavailable("lost the connection to the shared library")
        return attempts[-1]

    again = store._write(operation)  # type: ignore[attr-defined]
    assert len(attempts) == 2 and again.id == attempts[0].id
    assert len(store.history(image_id)) == 1 and store.labels_version() == 1


def test_actor_defaults_to_the_user(pg_library: Library, tmp_path: Path) -> None:
    store = pg_library.open(user="carol")
    (image_id,) = _add(store, tmp_path / "src", 1)
    event = store.set_label(image_id, "k", source="expert")
    assert (event.actor, event.user) == ("carol", "carol") and store.get_image(image_id).label_actor == "carol"


# -- schema, shared folder, indexes -------------------------------------------------------


def test_shared_folder_is_required_and_checked(pg_library: Library, tmp_path: Path) -> None:
    store = pg_library.open()
    _add(store, tmp_path / "src", 1)
    marker = json.loads((pg_library.shared / "nmid-library.json").read_text())
    assert marker["library_id"] == store.get_meta("library_id")
    assert [p.suffix for p in (pg_library.shared / "images").rglob("*.png")] == [".png"]
    with pytest.raises(LibraryError, match="shared_folder"):
        open_library(pg_library.location, shared_folder=None)
    other = tmp_path / "other"
    other.mkdir()
    (other / "nmid-library.json").write_text(json.dumps({"library_id": "someone-else"}))
    with pytest.raises(LibraryError, match="another library"):
        open_library(pg_library.location, shared_folder=other)
    with pytest.raises(LibraryError, match="is it mounted"):
        open_library(pg_library.location, shared_folder=tmp_path / "unmounted", create=False)
    # The index lives in this PC's cache, keyed by library, never in the shared folder.
    assert pg_library.shared not in store.index_dir.parents and library_key(pg_library.location) in str(store.index_dir)


def test_newer_schema_is_refused(pg_library: Library) -> None:
    pg_library.open().close()
    with psycopg.connect(pg_library.location, autocommit=True) as conn:
        conn.execute("UPDATE nmid_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(LibraryError, match="newer than this nmid-desktop"):
        pg_library.open()


# -- secrets ----------------------------------------------------------------------------------


def test_urls_are_redacted_everywhere() -> None:
    assert redact_url("postgresql://ann:s3cret@lab:5432/nmid") == "postgresql://ann:***@lab:5432/nmid"
    assert redact_url("postgresql://ann@lab/nmid?password=s3cret&sslmode=require") == (
        "postgresql://ann@lab/nmid?password=***&sslmode=require"
    )
    assert redact_url("postgresql://lab/nmid") == "postgresql://lab/nmid"
    text = redact_text("failed: postgresql://a:pw1234@h/db and host=h password=pw1234 user=a")
    assert "pw1234" not in text and text.count("***") == 2
    assert library_key("postgresql://a:one@h/db") == library_key("postgresql://a:two@h/db")


def test_server_down_at_start_is_one_clear_message_without_the_password(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://ann:TopSecret99@127.0.0.1:{port}/nmid"
    started = time.monotonic()
    with pytest.raises(LibraryUnavailable) as info:
        open_library(url, shared_folder=tmp_path / "shared")
    message = str(info.value)
    assert "TopSecret99" not in message and "postgresql://ann:***@127.0.0.1" in message
    assert "cannot reach the shared library" in message and time.monotonic() - started < 10


@pytest.fixture
def password_library(pg_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A database of a role that must send a password; no .pgpass, no PGPASSWORD yet."""
    role = pg_server.password_role("lab-pass-123")  # type: ignore[attr-defined]
    url = pg_server.create_database(owner=role)  # type: ignore[attr-defined]
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    return url.replace("postgres@", f"{role}@"), "lab-pass-123"


def test_password_comes_from_pgpass(
    password_library: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, password = password_library
    with pytest.raises(LibraryUnavailable, match="password"):
        open_library(url, shared_folder=tmp_path / "shared")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:*:*:nmid_pw:{password}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    with open_library(url, shared_folder=tmp_path / "shared") as store:
        assert store.labels_version() == 0 and password not in store.location


def test_password_comes_from_the_os_keyring(password_library: tuple[str, str], tmp_path: Path) -> None:
    import keyring
    from keyring.backend import KeyringBackend

    from nmid_desktop.core.store.postgres import KEYRING_SERVICE

    class MemoryKeyring(KeyringBackend):
        priority = 10  # type: ignore[assignment]

        def __init__(self) -> None:
            super().__init__()
            self.items: dict[tuple[str, str], str] = {}

        def get_password(self, service: str, username: str) -> str | None:
            return self.items.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            self.items[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            self.items.pop((service, username), None)

    url, password = password_library
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        backend.set_password(KEYRING_SERVICE, library_key(url), password)
        with open_library(url, shared_folder=tmp_path / "shared") as store:
            assert store.labels_version() == 0
        assert password not in json.dumps(list(backend.items)) and password not in url
    finally:
        keyring.set_keyring(previous)


# -- faults -------------------------------------------------------------------------------------


def _terminate_others(url: str, every_s: float, stop: threading.Event, kills: list[int]) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        while not stop.is_set():
            time.sleep(every_s)
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'nmid-desktop' AND pid <> pg_backend_pid()"
            ).fetchall()
            kills.append(len(rows))


def test_terminated_backends_reconnect_and_apply_each_change_once(pg_library: Library, tmp_path: Path) -> None:
    store = pg_library.open()
    ids = _add(store, tmp_path / "src", 100)
    stop = threading.Event()
    kills: list[int] = []
    killer = threading.Thread(target=_terminate_others, args=(pg_library.location, 0.05, stop, kills))
    killer.start()
    expected: dict[int, str] = {}
    n = 0
    try:
        # At least one pass over the images, and on until the connection was cut several times
        # (however fast this machine writes).
        while n < len(ids) or (sum(kills) < 3 and n < 5000):
            image_id = ids[n % len(ids)]
            expected[image_id] = f"c{n % 7}"
            store.set_label(image_id, expected[image_id], source="expert")
            n += 1
    finally:
        stop.set()
        killer.join()
    assert sum(kills) >= 3  # the connection really was cut several times
    history = store.history(limit=10_000)
    assert len(history) == n and store.labels_version() == n  # each change applied exactly once
    assert {i: store.get_image(i).label for i in ids} == expected


def test_server_restart_during_a_batch_loses_nothing(pg_server: object, pg_library: Library, tmp_path: Path) -> None:
    store = pg_library.open()
    ids = _add(store, tmp_path / "src", 60)
    restarted = threading.Event()

    def restart() -> None:
        time.sleep(0.2)
        pg_server.restart(down_s=1.0)  # type: ignore[attr-defined]
        restarted.set()

    thread = threading.Thread(target=restart)
    thread.start()
    for image_id in ids:
        store.set_label(image_id, "k", source="expert")
        time.sleep(0.02)
    thread.join()
    assert restarted.is_set()
    assert store.count_images() == 60 and len(store.history(limit=1000)) == 60
    assert {c.name: c.count for c in store.classes()} == {"k": 60}


def test_a_column_added_by_another_pcs_migration_is_read_by_name(pg_library: Library, tmp_path: Path) -> None:
    """Single-row reads keep one cursor and row class per statement; a new column finds them again.

    ``SELECT i.*, c.name AS label``: a column added to ``images`` moves ``label`` one place on.
    """
    store = pg_library.open()
    (image_id,) = _add(store, tmp_path / "f", 1)
    for label in ["pores", "wires"] * 4:  # past psycopg's prepare threshold: prepared on the server
        store.set_label(image_id, label, source="expert")
        assert store.get_image(image_id).label == label
    with psycopg.connect(pg_library.location, autocommit=True) as other:
        other.execute("ALTER TABLE images ADD COLUMN added_elsewhere INTEGER")
    try:
        # Inside a transaction: the change is made once, on a new connection.
        event = store.set_label(image_id, "pores", source="expert")
        assert store.get_image(image_id).label == "pores" and store.get_image(image_id).label_version == 9
        assert [e.id for e in store.history(image_id=image_id)].count(event.id) == 1
        with psycopg.connect(pg_library.location, autocommit=True) as other:
            other.execute("ALTER TABLE images DROP COLUMN added_elsewhere")
        assert store.get_image(image_id).label == "pores"  # outside one: read again at once
    finally:
        store.close()


def test_a_stale_plan_in_a_query_is_reported_and_the_next_query_works(pg_library: Library, tmp_path: Path) -> None:
    """query_finish is never retried (its insert must not run twice): a stale plan is one clear error."""
    from nmid_desktop.core.store import PredictionRecord

    store = pg_library.open()
    ids = _add(store, tmp_path / "f", 3)
    prediction = PredictionRecord(ids[0], "knn", "a", [("a", 1.0)], 1.0, demo_ids=ids[1:])
    for _ in range(7):  # past psycopg's prepare threshold
        store.query_finish(ids[1:], prediction)
    with psycopg.connect(pg_library.location, autocommit=True) as other:
        other.execute("ALTER TABLE images ADD COLUMN added_elsewhere INTEGER")
    try:
        with pytest.raises(LibraryUnavailable, match="cached plan"):
            store.query_finish(ids[1:], prediction)
        assert [r.id for r in store.query_finish(ids[1:], prediction)] == ids[1:]
    finally:
        with psycopg.connect(pg_library.location, autocommit=True) as other:
            other.execute("ALTER TABLE images DROP COLUMN added_elsewhere")
        store.close()
