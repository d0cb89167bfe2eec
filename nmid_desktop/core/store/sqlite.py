"""The SQLite library backend: one ``library.sqlite`` (WAL) and content-addressed ``images/``.

Durability: WAL mode with ``synchronous=NORMAL``. A committed transaction survives
the process being killed at any point (the WAL lives in the OS page cache and is
replayed on the next open); a power cut or OS crash may lose the last few committed
transactions, never corrupt the file. Image files are written under a temporary
name and renamed into place, so a final name always holds a complete file.

Threads: every thread gets its own ``sqlite3`` connection (a GUI worker thread and
the GUI thread never share one). Connections are opened with
``check_same_thread=False`` only so that :meth:`SqliteStore.close` can close all of
them from one thread; each connection is otherwise used by its own thread only.
WAL lets readers run while one writer writes; writers take the lock up front
(``BEGIN IMMEDIATE``) and wait up to ``BUSY_TIMEOUT_S`` for each other.
Network file systems (SMB/NFS shares) do not support WAL's shared memory: a lab
library shared between PCs needs the planned PostgreSQL backend.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from nmid_desktop.core.config import current_user
from nmid_desktop.core.errors import LibraryError
from nmid_desktop.core.store.sql import IMAGES_DIR, SqlStore, _now

log = logging.getLogger(__name__)

DB_NAME = "library.sqlite"
BUSY_TIMEOUT_S = 30.0


# Schema migrations, in order: MIGRATIONS[i] takes the schema from version i to i + 1.
# Each is a list of single statements (executescript would commit behind our back, and
# a migration must be all or nothing). Never edit a released migration: append a new one.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE classes (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            description TEXT NOT NULL DEFAULT '',
            color TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE images (
            id INTEGER PRIMARY KEY,
            sha256 TEXT NOT NULL CHECK (length(sha256) = 64),
            page INTEGER NOT NULL DEFAULT 0 CHECK (page >= 0),
            path TEXT NOT NULL,
            stored INTEGER NOT NULL,
            original_path TEXT NOT NULL,
            original_name TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            n_pages INTEGER NOT NULL,
            dtype TEXT NOT NULL,
            pixel_size_m REAL,
            crop_x0 INTEGER, crop_y0 INTEGER, crop_x1 INTEGER, crop_y1 INTEGER,
            synthetic INTEGER NOT NULL DEFAULT 0,
            source_image_id INTEGER REFERENCES images(id) ON DELETE SET NULL,
            added_at TEXT NOT NULL,
            class_id INTEGER REFERENCES classes(id),
            label_source TEXT,
            label_actor TEXT,
            label_model TEXT,
            label_prompt_version TEXT,
            label_confidence REAL,
            label_at TEXT,
            review TEXT NOT NULL DEFAULT 'pending' CHECK (review IN ('pending', 'accepted', 'rejected')),
            UNIQUE (sha256, page)
        )""",
        "CREATE INDEX images_class ON images(class_id)",
        "CREATE INDEX images_review ON images(review)",
        # One row per label or review change. Labels are kept twice: the class id (so a
        # rename follows) and the name at the time (so an event survives a merge that
        # deletes its class). old_prov/new_prov (JSON) are the image's label provenance
        # before and after, which undo and redo restore. Rows of one user action share
        # grp (a merge relabels many images in one step). discarded marks undone rows a
        # later change cut off from redo; they stay for audit.
        """CREATE TABLE label_events (
            id INTEGER PRIMARY KEY,
            grp INTEGER,
            kind TEXT NOT NULL,
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            old_class_id INTEGER REFERENCES classes(id) ON DELETE SET NULL,
            old_label TEXT,
            new_class_id INTEGER REFERENCES classes(id) ON DELETE SET NULL,
            new_label TEXT,
            old_review TEXT NOT NULL,
            new_review TEXT NOT NULL,
            old_prov TEXT NOT NULL,
            new_prov TEXT NOT NULL,
            source TEXT NOT NULL,
            actor TEXT NOT NULL DEFAULT '',
            model TEXT,
            prompt_version TEXT,
            confidence REAL,
            at TEXT NOT NULL,
            undone INTEGER NOT NULL DEFAULT 0,
            undone_at TEXT,
            discarded INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX label_events_image ON label_events(image_id, id)",
        "CREATE INDEX label_events_stack ON label_events(discarded, undone, id)",
        "CREATE INDEX label_events_grp ON label_events(grp)",
        """CREATE TABLE embeddings (
            encoder_key TEXT NOT NULL,
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL,
            PRIMARY KEY (encoder_key, image_id)
        )""",
        """CREATE TABLE predictions (
            id INTEGER PRIMARY KEY,
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            predictor TEXT NOT NULL,
            label TEXT,
            ranking TEXT NOT NULL,
            confidence REAL,
            model TEXT,
            prompt_version TEXT,
            rationale TEXT NOT NULL DEFAULT '',
            demo_ids TEXT NOT NULL DEFAULT '[]',
            valid INTEGER NOT NULL DEFAULT 1,
            reason TEXT NOT NULL DEFAULT '',
            tokens_in INTEGER NOT NULL DEFAULT 0,
            tokens_out INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0,
            at TEXT NOT NULL
        )""",
        "CREATE INDEX predictions_image ON predictions(image_id, id)",
        "CREATE INDEX predictions_predictor ON predictions(predictor, image_id, id)",
        """CREATE TABLE descriptions (
            id INTEGER PRIMARY KEY,
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            prompt_version TEXT NOT NULL,
            at TEXT NOT NULL
        )""",
        "CREATE INDEX descriptions_image ON descriptions(image_id, id)",
        """CREATE TABLE description_rows (
            description_id INTEGER NOT NULL REFERENCES descriptions(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            grp TEXT NOT NULL,
            question TEXT NOT NULL,
            answer TEXT NOT NULL,
            PRIMARY KEY (description_id, position)
        )""",
        """CREATE TABLE api_usage (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            model TEXT NOT NULL,
            tokens_in INTEGER NOT NULL,
            tokens_out INTEGER NOT NULL,
            cost_usd REAL NOT NULL,
            images INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE splits (
            image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
            split TEXT NOT NULL CHECK (split IN ('train', 'val', 'test')),
            assigned_at TEXT NOT NULL
        )""",
        "INSERT INTO meta (key, value) VALUES ('labels_version', '0')",
    ],
    # v2: many users (the PostgreSQL backend shares this logic). A label version per image for
    # optimistic concurrency, the labels version of its last change for changes_since(), whose
    # undo stack an event is on, and the tokens of applied operations so a retry never applies twice.
    [
        "ALTER TABLE images ADD COLUMN label_version INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE images ADD COLUMN changed_version INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX images_changed ON images(changed_version)",
        "ALTER TABLE label_events ADD COLUMN user_name TEXT NOT NULL DEFAULT ''",
        "CREATE TABLE applied_ops (token TEXT PRIMARY KEY, event_id INTEGER NOT NULL, at TEXT NOT NULL)",
    ],
    # v3: number keys belong to the library (issue 13.6). Existing classes get the keys they
    # had by alphabetical position (1-9), so nobody's muscle memory changes on upgrade.
    [
        "ALTER TABLE classes ADD COLUMN key INTEGER CHECK (key BETWEEN 1 AND 9)",
        """UPDATE classes SET key = (SELECT COUNT(*) FROM classes c2 WHERE c2.name < classes.name) + 1
           WHERE (SELECT COUNT(*) FROM classes c2 WHERE c2.name < classes.name) < 9""",
        "CREATE UNIQUE INDEX classes_key ON classes(key)",
    ],
    # v4: the library browser at a million rows (sql_browse.py): the review queue's keys per local
    # predictor (margin, -entropy of its latest prediction, the latest model answer's agreement),
    # kept from the predictions table so an index gives the queue's order; the catch-up mark.
    [
        """CREATE TABLE queue_keys (
            choice TEXT NOT NULL,
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            own INTEGER NOT NULL,
            prediction_id INTEGER NOT NULL,
            top1 TEXT,
            margin REAL,
            neg_entropy REAL,
            agree_rank INTEGER NOT NULL DEFAULT 1,
            PRIMARY KEY (choice, image_id)
        )""",
        "CREATE INDEX queue_keys_uncertain ON queue_keys(choice, margin, neg_entropy, image_id)",
        "CREATE INDEX queue_keys_disagree ON queue_keys(choice, agree_rank, margin, neg_entropy, image_id)",
        "CREATE INDEX queue_keys_image ON queue_keys(image_id)",
        """CREATE TABLE queue_model (
            image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
            prediction_id INTEGER NOT NULL,
            label TEXT,
            valid INTEGER NOT NULL
        )""",
        "CREATE TABLE queue_state (upto INTEGER NOT NULL)",
        "INSERT INTO queue_state (upto) VALUES (0)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


class SqliteStore(SqlStore):
    """A library folder holding ``library.sqlite`` and ``images/``.

    Use :func:`nmid_desktop.core.store.open_library` rather than this class directly.
    Like every :class:`Store`, it is a context manager that closes itself.
    """

    def __init__(
        self, root: Path, *, create: bool = True, user: str | None = None, allow_incomplete: bool = False
    ) -> None:
        self.root = Path(root)
        self.user = user if user is not None else current_user()
        self.db_path = self.root / DB_NAME
        if self.root.exists() and not self.root.is_dir():
            raise LibraryError(f"{self.root} is a file, not a library folder")
        _refuse_lost_database(self.root, self.db_path)
        if not self.db_path.exists():
            if not create:
                raise LibraryError(f"no library at {self.root} (no {DB_NAME}); import images or run `nmid demo` first")
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LibraryError(f"cannot create the library folder {self.root}: {exc.strerror or exc}") from exc
        self.read_only = False
        self._write_checked = False
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._closed = False
        self._made_dirs: set[Path] = set()
        try:
            self._migrate(self._conn())
            if not allow_incomplete and self.get_meta("copy_state") == "incomplete":
                raise LibraryError(
                    f"{self.root} holds an interrupted `nmid library copy`; it is not usable: delete it and copy again"
                )
        except BaseException:
            self.close()
            raise

    # -- connections and transactions -----------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            if self._closed:
                raise LibraryError(f"the library {self.root} is closed")
            return conn
        with self._lock:
            if self._closed:
                raise LibraryError(f"the library {self.root} is closed")
            # Close connections of threads that have ended (a GUI starts a thread per job).
            for thread in [t for t in self._conns if not t.is_alive()]:
                self._conns.pop(thread).close()
            try:
                conn = self._connect_read_only() if self.read_only else self._connect()
            except sqlite3.OperationalError as exc:
                if self.read_only or _writable(self.root, self.db_path):
                    raise _library_error(self.root, exc, f"{self.db_path} is not a usable library database") from None
                # A library on a read-only share or a write-protected copy: reading still works.
                log.info("%s is read-only (%s); opening it for reading only", self.db_path, exc)
                self.read_only = True
                try:
                    conn = self._connect_read_only()
                except sqlite3.Error as exc2:
                    raise _library_error(self.root, exc2, f"{self.db_path} is not a usable library database") from None
            except sqlite3.Error as exc:
                raise _library_error(self.root, exc, f"{self.db_path} is not a usable library database") from None
            self._conns[threading.current_thread()] = conn
            self._local.conn = conn
            self._local.depth = 0
        return conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.db_path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("%s: WAL mode unavailable (journal mode %s); is it on a network share?", self.db_path, mode)
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that never writes: ``immutable`` because WAL would need its -shm file."""
        uri = f"{self.db_path.resolve().as_uri()}?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA query_only=ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn

    def _check_before_writing(self, conn: sqlite3.Connection) -> None:
        """Refuse changes to a read-only or damaged database (checked once per open library)."""
        if self.read_only:
            raise LibraryError(
                f"the library {self.root} is read-only (a write-protected folder or share): "
                "it can be viewed, searched and exported, not changed"
            )
        if self._write_checked:
            return
        try:
            result = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)").fetchall()]
        except sqlite3.DatabaseError as exc:
            result = [str(exc)]
        if result != ["ok"]:
            raise LibraryError(
                f"the library database {self.db_path} is damaged ({'; '.join(result).replace(chr(10), '; ')[:200]}): "
                "it is refused for "
                "changes so nothing more is lost. Restore it from a backup, or recover it with "
                f"`sqlite3 {self.db_path} .recover` into a new file"
            )
        self._write_checked = True

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the schema to SCHEMA_VERSION, all pending migrations in one transaction."""
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise _library_error(self.root, exc, f"{self.db_path} is not a usable library database") from None
        if version == SCHEMA_VERSION:
            return
        if self.read_only:
            raise LibraryError(f"the library {self.root} is read-only and needs an upgrade to schema {SCHEMA_VERSION}")
        if version > SCHEMA_VERSION:
            raise LibraryError(
                f"the library {self.root} has schema version {version}, newer than this nmid-desktop "
                f"understands ({SCHEMA_VERSION}); update nmid-desktop to open it"
            )
        try:
            with self.transaction():
                # Read again under the write lock: another process may have migrated meanwhile.
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[target - 1]:
                        conn.execute(statement)
                    # user_version lives in the database header, which is part of the transaction.
                    conn.execute(f"PRAGMA user_version = {int(target)}")
                if version == 0:
                    conn.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('created_at', ?)", (json.dumps(_now()),)
                    )
        except sqlite3.Error as exc:
            raise LibraryError(
                f"cannot upgrade the library {self.root} from schema version {version} to {SCHEMA_VERSION} "
                f"(nothing was changed): {exc}"
            ) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: ``BEGIN IMMEDIATE`` outermost, a ``SAVEPOINT`` when nested.

        The transaction belongs to the calling thread's connection; enter and leave it
        in the same thread.
        """
        conn = self._conn()
        depth = self._local.depth
        if depth == 0:
            self._check_before_writing(conn)
        try:
            conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT sp{depth}")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise LibraryError(f"the library {self.root} is busy or locked: {exc}") from exc
            raise _library_error(self.root, exc, f"cannot change the library {self.root}") from None
        self._local.depth = depth + 1
        try:
            yield
        except BaseException:
            self._local.depth = depth
            if conn.in_transaction:
                if depth == 0:
                    conn.execute("ROLLBACK")
                else:
                    conn.execute(f"ROLLBACK TO sp{depth}")
                    conn.execute(f"RELEASE sp{depth}")
            raise
        self._local.depth = depth
        if depth == 0:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise _library_error(self.root, exc, f"cannot save the change to {self.root}") from None
        else:
            conn.execute(f"RELEASE sp{depth}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing is best effort
                log.debug("error closing a connection", exc_info=True)

    # -- dialect hooks ------------------------------------------------------------------
    _NO_LIMIT = -1
    _integrity_error = sqlite3.IntegrityError

    def clean_temporary_files(self, min_age_s: float = 600.0) -> int:
        """Remove temporary copies a killed import left in ``images/``; returns how many.

        Only ``images/<2 hex>/.<sha>.<random>.tmp`` files untouched for ``min_age_s`` are
        removed: a copy still being written (by another process) keeps its mtime fresh.
        """
        import time

        removed = 0
        images = self.root / IMAGES_DIR
        now = time.time()
        try:
            shards = [e for e in os.scandir(images) if len(e.name) == 2 and e.is_dir(follow_symlinks=False)]
        except OSError:
            return 0
        for shard in shards:
            try:
                with os.scandir(shard.path) as it:
                    stale = [
                        e.path for e in it
                        if e.name.startswith(".") and e.name.endswith(".tmp") and now - e.stat().st_mtime > min_age_s
                    ]
            except OSError:
                continue
            for path in stale:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    removed += 1
        return removed

    def _q(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        conn = self._conn()
        try:
            return conn.execute(sql, params)
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
            if isinstance(exc, sqlite3.IntegrityError) or not _is_storage_fault(exc):
                raise
            raise _library_error(self.root, exc, f"library {self.root}") from None

    def _insert(self, sql: str, params: Sequence[Any]) -> int:
        return int(self._conn().execute(sql, params).lastrowid or 0)

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._conn().executemany(sql, rows)

    def _own(self) -> tuple[str, list[Any]]:
        # One person's file: undo walks every change in it, whoever the settings name today.
        return "", []

    def _id_table(self, ids: Sequence[int]) -> tuple[str, Any]:
        # json_each keeps one parameter however many ids there are (SQLite caps parameters).
        return "json_each(?) j", json.dumps([int(i) for i in ids])


_FULL_WORDS = ("database or disk is full", "disk is full")
_DAMAGE_WORDS = ("malformed", "not a database", "file is encrypted", "corrupt")
_READONLY_WORDS = ("readonly database", "read-only", "readonly")


def _is_storage_fault(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(w in text for w in _FULL_WORDS + _DAMAGE_WORDS + _READONLY_WORDS) or "disk i/o error" in text


def _library_error(root: Path, exc: BaseException, context: str) -> LibraryError:
    """One clear message for the storage faults SQLite reports (full disk, damage, read-only)."""
    text = str(exc)
    lower = text.lower()
    if any(w in lower for w in _FULL_WORDS) or getattr(exc, "errno", None) == errno.ENOSPC:
        return LibraryError(
            f"the disk holding the library {root} is full: the last change was not saved (everything saved "
            "before it is safe); free some space and try again"
        )
    if any(w in lower for w in _DAMAGE_WORDS):
        return LibraryError(
            f"{context}: the database file is damaged ({text}); it is refused for changes. Restore it from a "
            "backup, or recover it with `sqlite3 library.sqlite .recover`"
        )
    if any(w in lower for w in _READONLY_WORDS):
        return LibraryError(f"the library {root} is read-only: it can be viewed and exported, not changed ({text})")
    if "disk i/o error" in lower:
        return LibraryError(f"{context}: the disk reported an input/output error ({text}); check the drive")
    return LibraryError(f"{context}: {text}")


def _writable(root: Path, db_path: Path) -> bool:
    """True when the database file can be opened for writing and the folder takes new files (WAL needs both)."""
    try:
        with open(db_path, "r+b"):
            pass
        probe = root / f".nmid-write-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.touch()
        probe.unlink()
    except OSError:
        return False
    return True


def _refuse_lost_database(root: Path, db_path: Path) -> None:
    """Refuse to start a new, empty database beside an ``images/`` folder that holds images.

    An empty (0-byte) or missing ``library.sqlite`` next to stored images means the
    labels were lost (a failed copy, a sync tool, a full disk); creating a fresh empty
    library there would hide that and later mix two libraries' files.
    """
    try:
        size = db_path.stat().st_size
    except FileNotFoundError:
        size = -1
    except OSError:
        return
    if size > 0:
        return
    images = root / IMAGES_DIR
    try:
        stored = next((p for shard in images.iterdir() if shard.is_dir() for p in shard.iterdir()), None)
    except OSError:
        return
    if stored is None:
        return
    state = "empty (0 bytes)" if size == 0 else "missing"
    raise LibraryError(
        f"{db_path} is {state}, but {images} holds stored images: the library's database was lost. "
        "Restore library.sqlite from a backup; to start a new library instead, choose another folder "
        "(or move the images folder away first)"
    )
