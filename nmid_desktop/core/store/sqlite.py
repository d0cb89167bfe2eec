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
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from nmid_desktop.core.errors import LabelError, LibraryError
from nmid_desktop.core.labels import validate_label
from nmid_desktop.core.store.base import (
    LABEL_SOURCES,
    REVIEW_STATES,
    SPLITS,
    ClassRecord,
    DescriptionRecord,
    DescriptionRow,
    ImageFilter,
    ImageRecord,
    LabelEvent,
    PredictionRecord,
    Store,
)

log = logging.getLogger(__name__)

DB_NAME = "library.sqlite"
IMAGES_DIR = "images"
BUSY_TIMEOUT_S = 30.0

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")

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
]
SCHEMA_VERSION = len(MIGRATIONS)

_IMAGE_SELECT = """
    SELECT i.*, c.name AS label FROM images i LEFT JOIN classes c ON c.id = i.class_id
"""
_EVENT_SELECT = """
    SELECT e.*, COALESCE(oc.name, e.old_label) AS old_name, COALESCE(nc.name, e.new_label) AS new_name
    FROM label_events e
    LEFT JOIN classes oc ON oc.id = e.old_class_id
    LEFT JOIN classes nc ON nc.id = e.new_class_id
"""
_PROV_KEYS = ("source", "actor", "model", "prompt_version", "confidence", "at")
_NO_PROV = dict.fromkeys(_PROV_KEYS)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _check_finite(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        raise LabelError(f"{what} must be a finite number, not {value}")
    return value



def _rowid(cur: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just made (sqlite3 types it Optional; after an INSERT it is set)."""
    if cur.lastrowid is None:
        raise LibraryError("the database did not report the new row's id")
    return int(cur.lastrowid)

class SqliteStore(Store):
    """A library folder holding ``library.sqlite`` and ``images/``.

    Use :func:`nmid_desktop.core.store.open_library` rather than this class directly.
    Like every :class:`Store`, it is a context manager that closes itself.
    """

    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = Path(root)
        self.db_path = self.root / DB_NAME
        if self.root.exists() and not self.root.is_dir():
            raise LibraryError(f"{self.root} is a file, not a library folder")
        if not self.db_path.exists():
            if not create:
                raise LibraryError(f"no library at {self.root} (no {DB_NAME}); import images or run `nmid demo` first")
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LibraryError(f"cannot create the library folder {self.root}: {exc.strerror or exc}") from exc
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._closed = False
        self._made_dirs: set[Path] = set()
        try:
            self._migrate(self._conn())
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
                conn = sqlite3.connect(
                    str(self.db_path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
                )
            except sqlite3.Error as exc:
                raise LibraryError(f"cannot open the library {self.db_path}: {exc}") from exc
            try:
                conn.row_factory = sqlite3.Row
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("%s: WAL mode unavailable (journal mode %s); is it on a network share?", self.db_path, mode)
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise LibraryError(f"{self.db_path} is not a usable library database: {exc}") from exc
            self._conns[threading.current_thread()] = conn
            self._local.conn = conn
            self._local.depth = 0
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the schema to SCHEMA_VERSION, all pending migrations in one transaction."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
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
        try:
            conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT sp{depth}")
        except sqlite3.OperationalError as exc:
            raise LibraryError(f"the library {self.root} is busy or locked: {exc}") from exc
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
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
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

    def _q(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        return self._conn().execute(sql, params)

    def _bump(self) -> None:
        self._q("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'labels_version'")

    # -- images -------------------------------------------------------------------------
    def add_image(
        self,
        source: Path,
        *,
        sha256: str,
        page: int,
        n_pages: int,
        width: int,
        height: int,
        dtype: str,
        pixel_size_m: float | None = None,
        crop_box: tuple[int, int, int, int] | None = None,
        copy: bool = True,
        synthetic: bool = False,
        source_image_id: int | None = None,
        original_path: str | None = None,
    ) -> tuple[int, bool]:
        source = Path(source)
        if not _SHA256.match(sha256 or ""):
            raise LibraryError(f"{source}: sha256 must be 64 lower-case hex digits")
        if not 0 <= page < max(1, n_pages):
            raise LibraryError(f"{source}: page {page} is outside 0..{n_pages - 1}")
        if width < 1 or height < 1:
            raise LibraryError(f"{source}: image size {width}x{height} is empty")
        crop = self._check_crop(crop_box, width, height, source)
        pixel_size_m = _check_finite(pixel_size_m, "pixel size")
        with self.transaction():
            row = self._q("SELECT id FROM images WHERE sha256 = ? AND page = ?", (sha256, page)).fetchone()
            if row is not None:
                return int(row["id"]), False
            original = original_path or os.path.abspath(source)
            if copy:
                rel = self._store_file(source, sha256)
                path_text = rel
            else:
                if not source.is_file():
                    raise LibraryError(f"{source}: the file to reference does not exist")
                path_text = os.path.abspath(source)
            try:
                cur = self._q(
                    """INSERT INTO images (sha256, page, path, stored, original_path, original_name, width,
                       height, n_pages, dtype, pixel_size_m, crop_x0, crop_y0, crop_x1, crop_y1, synthetic,
                       source_image_id, added_at, review) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'pending')""",
                    (
                        sha256, page, path_text, int(copy), str(original), _basename(str(original)), int(width),
                        int(height), int(n_pages), str(dtype), pixel_size_m, *crop, int(bool(synthetic)),
                        source_image_id, _now(),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise LibraryError(f"{source}: cannot add image: {exc} (unknown source image {source_image_id}?)") from exc
            return _rowid(cur), True

    @staticmethod
    def _check_crop(
        crop_box: tuple[int, int, int, int] | None, width: int, height: int, what: object
    ) -> tuple[int | None, ...]:
        if crop_box is None:
            return (None, None, None, None)
        x0, y0, x1, y1 = (int(v) for v in crop_box)
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise LibraryError(f"{what}: crop box {tuple(crop_box)} is outside the {width}x{height} image")
        return (x0, y0, x1, y1)

    def _store_file(self, source: Path, sha256: str) -> str:
        """Copy ``source`` to ``images/<sha[:2]>/<sha><suffix>``; returns the path relative to the root."""
        suffix = source.suffix.lower()
        if not _SUFFIX.match(suffix):
            suffix = ""
        rel = f"{IMAGES_DIR}/{sha256[:2]}/{sha256}{suffix}"
        final = self.root / rel
        if final.is_file():
            # Content-addressed and only ever created by rename: an existing file is complete
            # (it may be left from an import that was killed before its commit).
            return rel
        if final.parent not in self._made_dirs:  # one mkdir per shard, not per file (slow on VM disks)
            final.parent.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(final.parent)
        tmp = final.parent / f".{sha256}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            try:
                digest = _copy_hashing(source, tmp)
            except FileNotFoundError:
                if not source.is_file():
                    raise
                final.parent.mkdir(parents=True, exist_ok=True)  # the shard was deleted meanwhile
                digest = _copy_hashing(source, tmp)
            if digest != sha256:
                tmp.unlink()
                raise LibraryError(f"{source}: the file changed while it was being imported; import it again")
            os.replace(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if final.is_file():  # another process stored the same content at the same moment (Windows)
                return rel
            raise LibraryError(f"{source}: cannot copy into the library: {exc.strerror or exc}") from exc
        return rel

    def _record(self, row: sqlite3.Row) -> ImageRecord:
        stored = bool(row["stored"])
        crop = None if row["crop_x0"] is None else (row["crop_x0"], row["crop_y0"], row["crop_x1"], row["crop_y1"])
        return ImageRecord(
            id=row["id"],
            sha256=row["sha256"],
            page=row["page"],
            path=self.root / row["path"] if stored else Path(row["path"]),
            stored=stored,
            original_path=row["original_path"],
            original_name=row["original_name"],
            width=row["width"],
            height=row["height"],
            n_pages=row["n_pages"],
            dtype=row["dtype"],
            pixel_size_m=row["pixel_size_m"],
            crop_box=crop,
            synthetic=bool(row["synthetic"]),
            source_image_id=row["source_image_id"],
            added_at=row["added_at"],
            label=row["label"],
            label_source=row["label_source"],
            label_model=row["label_model"],
            label_confidence=row["label_confidence"],
            review=row["review"],
            label_actor=row["label_actor"],
            label_prompt_version=row["label_prompt_version"],
            label_at=row["label_at"],
        )

    def find_image(self, sha256: str, page: int = 0) -> ImageRecord | None:
        row = self._q(_IMAGE_SELECT + " WHERE i.sha256 = ? AND i.page = ?", (sha256, page)).fetchone()
        return None if row is None else self._record(row)

    def get_image(self, image_id: int) -> ImageRecord:
        row = self._q(_IMAGE_SELECT + " WHERE i.id = ?", (int(image_id),)).fetchone()
        if row is None:
            raise LibraryError(f"no image with id {image_id} in the library {self.root}")
        return self._record(row)

    @staticmethod
    def _where(flt: ImageFilter | None) -> tuple[str, list[Any]]:
        if flt is None:
            return "", []
        clauses: list[str] = []
        params: list[Any] = []
        if flt.label is not None:
            clauses.append("c.name = ?")
            params.append(flt.label)
        if flt.label_source is not None:
            clauses.append("i.label_source = ?")
            params.append(flt.label_source)
        if flt.unlabelled is not None:
            clauses.append("i.class_id IS NULL" if flt.unlabelled else "i.class_id IS NOT NULL")
        if flt.review is not None:
            clauses.append("i.review = ?")
            params.append(flt.review)
        if flt.synthetic is not None:
            clauses.append("i.synthetic = ?")
            params.append(int(flt.synthetic))
        if flt.ids is not None:
            # json_each keeps one parameter however many ids there are (SQLite caps parameters).
            clauses.append("i.id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps([int(i) for i in flt.ids]))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def images(self, flt: ImageFilter | None = None, *, limit: int | None = None, offset: int = 0) -> list[ImageRecord]:
        where, params = self._where(flt)
        sql = _IMAGE_SELECT + where + " ORDER BY i.id LIMIT ? OFFSET ?"
        rows = self._q(sql, [*params, -1 if limit is None else int(limit), int(offset)]).fetchall()
        return [self._record(r) for r in rows]

    def count_images(self, flt: ImageFilter | None = None) -> int:
        where, params = self._where(flt)
        sql = "SELECT COUNT(*) FROM images i LEFT JOIN classes c ON c.id = i.class_id" + where
        return int(self._q(sql, params).fetchone()[0])

    def set_crop_box(self, image_id: int, crop_box: tuple[int, int, int, int] | None) -> None:
        with self.transaction():
            image = self.get_image(image_id)
            crop = self._check_crop(crop_box, image.width, image.height, f"image {image_id}")
            self._q(
                "UPDATE images SET crop_x0 = ?, crop_y0 = ?, crop_x1 = ?, crop_y1 = ? WHERE id = ?",
                (*crop, image.id),
            )

    # -- taxonomy -----------------------------------------------------------------------
    def _class_row(self, name: str) -> sqlite3.Row | None:
        return self._q("SELECT * FROM classes WHERE name = ?", (name,)).fetchone()

    def _class_record(self, class_id: int) -> ClassRecord:
        row = self._q(
            """SELECT c.*, (SELECT COUNT(*) FROM images i WHERE i.class_id = c.id AND i.review != 'rejected') AS n
               FROM classes c WHERE c.id = ?""",
            (class_id,),
        ).fetchone()
        return ClassRecord(row["id"], row["name"], row["description"], row["color"], row["n"])

    def _require_class(self, name: str) -> sqlite3.Row:
        row = self._class_row(validate_label(name))
        if row is None:
            raise LabelError(f"no class named {name!r} in this library")
        return row

    def _class_id(self, name: str) -> int:
        """The id of a class, created if missing (caller holds a transaction)."""
        name = validate_label(name)
        row = self._class_row(name)
        if row is not None:
            return int(row["id"])
        cur = self._q("INSERT INTO classes (name, created_at) VALUES (?, ?)", (name, _now()))
        return _rowid(cur)

    @staticmethod
    def _check_color(color: str) -> str:
        color = (color or "").strip()
        if color and not _COLOR.match(color):
            raise LabelError(f"colour {color!r} must look like #rrggbb")
        return color.lower()

    def classes(self) -> list[ClassRecord]:
        rows = self._q(
            """SELECT c.id, c.name, c.description, c.color, COUNT(i.id) AS n FROM classes c
               LEFT JOIN images i ON i.class_id = c.id AND i.review != 'rejected'
               GROUP BY c.id ORDER BY c.name"""
        ).fetchall()
        return [ClassRecord(r["id"], r["name"], r["description"], r["color"], r["n"]) for r in rows]

    def add_class(self, name: str, description: str = "", color: str = "") -> ClassRecord:
        name = validate_label(name)
        color = self._check_color(color)
        with self.transaction():
            row = self._class_row(name)
            if row is not None:
                return self._class_record(row["id"])
            cur = self._q(
                "INSERT INTO classes (name, description, color, created_at) VALUES (?, ?, ?, ?)",
                (name, description or "", color, _now()),
            )
            self._bump()
            return self._class_record(_rowid(cur))

    def update_class(self, name: str, *, description: str | None = None, color: str | None = None) -> ClassRecord:
        with self.transaction():
            row = self._require_class(name)
            if description is not None:
                self._q("UPDATE classes SET description = ? WHERE id = ?", (description, row["id"]))
            if color is not None:
                self._q("UPDATE classes SET color = ? WHERE id = ?", (self._check_color(color), row["id"]))
            self._bump()
            return self._class_record(row["id"])

    def rename_class(self, old: str, new: str) -> ClassRecord:
        new = validate_label(new)
        with self.transaction():
            row = self._require_class(old)
            if row["name"] == new:
                return self._class_record(row["id"])
            if self._class_row(new) is not None:
                raise LabelError(f"a class named {new!r} already exists; merge the classes instead")
            self._q("UPDATE classes SET name = ? WHERE id = ?", (new, row["id"]))
            self._bump()
            return self._class_record(row["id"])

    def merge_classes(self, source: str, target: str, actor: str = "") -> int:
        with self.transaction():
            src = self._require_class(source)
            target_id = self._class_id(target)
            if target_id == src["id"]:
                raise LabelError(f"cannot merge class {src['name']!r} into itself")
            ids = [r[0] for r in self._q("SELECT id FROM images WHERE class_id = ? ORDER BY id", (src["id"],))]
            self._discard_redo()
            now = _now()
            group: int | None = None
            for image_id in ids:
                row = self._image_row(image_id)
                # A merge changes the taxonomy, not the judgement: provenance and review stay.
                prov = self._prov(row)
                event_id = self._insert_event(
                    "merge", row, target_id, row["review"], prov, source="expert", actor=actor, at=now, grp=group
                )
                if group is None:
                    group = event_id
                    self._q("UPDATE label_events SET grp = ? WHERE id = ?", (group, event_id))
                self._q("UPDATE images SET class_id = ? WHERE id = ?", (target_id, image_id))
            self._q("DELETE FROM classes WHERE id = ?", (src["id"],))
            self._bump()
            return len(ids)

    # -- labels and history ---------------------------------------------------------------
    def _image_row(self, image_id: int) -> sqlite3.Row:
        row = self._q(_IMAGE_SELECT + " WHERE i.id = ?", (int(image_id),)).fetchone()
        if row is None:
            raise LibraryError(f"no image with id {image_id} in the library {self.root}")
        return row

    @staticmethod
    def _prov(row: sqlite3.Row) -> dict[str, Any]:
        return {key: row[f"label_{key}"] for key in _PROV_KEYS}

    def _insert_event(
        self,
        kind: str,
        row: sqlite3.Row,
        new_class_id: int | None,
        new_review: str,
        new_prov: dict[str, Any],
        *,
        source: str,
        actor: str,
        at: str,
        model: str | None = None,
        prompt_version: str | None = None,
        confidence: float | None = None,
        grp: int | None = None,
    ) -> int:
        new_name = None
        if new_class_id is not None:
            new_name = self._q("SELECT name FROM classes WHERE id = ?", (new_class_id,)).fetchone()[0]
        cur = self._q(
            """INSERT INTO label_events (grp, kind, image_id, old_class_id, old_label, new_class_id, new_label,
               old_review, new_review, old_prov, new_prov, source, actor, model, prompt_version, confidence, at)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            (
                grp, kind, row["id"], row["class_id"], row["label"], new_class_id, new_name, row["review"],
                new_review, json.dumps(self._prov(row)), json.dumps(new_prov), source, actor or "", model,
                prompt_version, confidence, at,
            ),
        )
        return _rowid(cur)

    def _apply(self, image_id: int, class_id: int | None, review: str, prov: dict[str, Any]) -> None:
        self._q(
            """UPDATE images SET class_id = ?, review = ?, label_source = ?, label_actor = ?, label_model = ?,
               label_prompt_version = ?, label_confidence = ?, label_at = ? WHERE id = ?""",
            (class_id, review, *(prov.get(k) for k in _PROV_KEYS), image_id),
        )

    def _discard_redo(self) -> None:
        """A new change after undo cuts the redo stack off (rows are kept for audit)."""
        self._q("UPDATE label_events SET discarded = 1 WHERE undone = 1 AND discarded = 0")

    def _event(self, event_id: int) -> LabelEvent:
        row = self._q(_EVENT_SELECT + " WHERE e.id = ?", (event_id,)).fetchone()
        return self._event_record(row)

    @staticmethod
    def _event_record(row: sqlite3.Row) -> LabelEvent:
        return LabelEvent(
            id=row["id"],
            image_id=row["image_id"],
            old_label=row["old_name"],
            new_label=row["new_name"],
            old_review=row["old_review"],
            new_review=row["new_review"],
            source=row["source"],
            actor=row["actor"],
            model=row["model"],
            prompt_version=row["prompt_version"],
            confidence=row["confidence"],
            at=row["at"],
            undone=bool(row["undone"]),
        )

    def set_label(
        self,
        image_id: int,
        label: str | None,
        *,
        source: str,
        actor: str = "",
        model: str | None = None,
        prompt_version: str | None = None,
        confidence: float | None = None,
        review: str | None = None,
    ) -> LabelEvent:
        if source not in LABEL_SOURCES:
            raise LabelError(f"label source must be one of {', '.join(LABEL_SOURCES)}, not {source!r}")
        if review is not None and review not in REVIEW_STATES:
            raise LabelError(f"review must be one of {', '.join(REVIEW_STATES)}, not {review!r}")
        confidence = _check_finite(confidence, "confidence")
        if label is not None:
            label = validate_label(label)
        with self.transaction():
            row = self._image_row(image_id)
            class_id = None if label is None else self._class_id(label)
            if review is None:
                review = "accepted" if source in ("expert", "import") and label is not None else "pending"
            now = _now()
            prov = (
                dict(_NO_PROV)
                if label is None
                else {"source": source, "actor": actor or "", "model": model, "prompt_version": prompt_version,
                      "confidence": confidence, "at": now}
            )
            self._discard_redo()
            event_id = self._insert_event(
                "label", row, class_id, review, prov, source=source, actor=actor, at=now, model=model,
                prompt_version=prompt_version, confidence=confidence,
            )
            self._apply(row["id"], class_id, review, prov)
            self._bump()
            return self._event(event_id)

    def set_review(self, image_id: int, review: str, *, actor: str = "") -> LabelEvent:
        if review not in REVIEW_STATES:
            raise LabelError(f"review must be one of {', '.join(REVIEW_STATES)}, not {review!r}")
        with self.transaction():
            row = self._image_row(image_id)
            if review == "accepted" and row["class_id"] is None:
                raise LabelError(f"image {image_id} has no label to accept; set a label first")
            self._discard_redo()
            # The label's provenance (e.g. "lmm, gpt-4.1-mini") stays; the event records the reviewer.
            prov = self._prov(row)
            event_id = self._insert_event(
                "review", row, row["class_id"], review, prov, source="expert", actor=actor, at=_now()
            )
            self._apply(row["id"], row["class_id"], review, prov)
            self._bump()
            return self._event(event_id)

    def _resolve_class(self, class_id: int | None, name: str | None) -> int | None:
        """The class to restore: by id, or re-created by name when a merge deleted it."""
        if class_id is not None:
            return class_id
        return None if name is None else self._class_id(name)

    def _group(self, row: sqlite3.Row, undone: int) -> list[sqlite3.Row]:
        if row["grp"] is None:
            return [row]
        order = "DESC" if undone == 0 else "ASC"
        return self._q(
            f"SELECT * FROM label_events WHERE grp = ? AND undone = ? AND discarded = 0 ORDER BY id {order}",
            (row["grp"], undone),
        ).fetchall()

    def undo(self) -> LabelEvent | None:
        with self.transaction():
            top = self._q(
                "SELECT * FROM label_events WHERE discarded = 0 AND undone = 0 ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if top is None:
                return None
            now = _now()
            for ev in self._group(top, 0):
                class_id = self._resolve_class(ev["old_class_id"], ev["old_label"])
                self._apply(ev["image_id"], class_id, ev["old_review"], json.loads(ev["old_prov"]))
                self._q("UPDATE label_events SET undone = 1, undone_at = ? WHERE id = ?", (now, ev["id"]))
            self._bump()
            return self._event(top["id"])

    def redo(self) -> LabelEvent | None:
        with self.transaction():
            first = self._q(
                "SELECT * FROM label_events WHERE discarded = 0 AND undone = 1 ORDER BY id ASC LIMIT 1"
            ).fetchone()
            if first is None:
                return None
            group = self._group(first, 1)
            for ev in group:
                class_id = self._resolve_class(ev["new_class_id"], ev["new_label"])
                self._apply(ev["image_id"], class_id, ev["new_review"], json.loads(ev["new_prov"]))
                self._q("UPDATE label_events SET undone = 0, undone_at = NULL WHERE id = ?", (ev["id"],))
            if first["kind"] == "merge":
                # Redoing a merge drops the source class again (undo re-created it), if now empty.
                for name in {ev["old_label"] for ev in group if ev["old_label"] is not None}:
                    self._q(
                        """DELETE FROM classes WHERE name = ? AND NOT EXISTS
                           (SELECT 1 FROM images WHERE class_id = classes.id)""",
                        (name,),
                    )
            self._bump()
            return self._event(first["id"])

    def history(self, image_id: int | None = None, limit: int = 100) -> list[LabelEvent]:
        if image_id is None:
            rows = self._q(_EVENT_SELECT + " ORDER BY e.id DESC LIMIT ?", (int(limit),)).fetchall()
        else:
            rows = self._q(
                _EVENT_SELECT + " WHERE e.image_id = ? ORDER BY e.id DESC LIMIT ?", (int(image_id), int(limit))
            ).fetchall()
        return [self._event_record(r) for r in rows]

    def labels_version(self) -> int:
        return int(self._q("SELECT value FROM meta WHERE key = 'labels_version'").fetchone()[0])

    def labelled(self, *, include_pending: bool = True, include_synthetic: bool = False) -> list[tuple[int, str]]:
        rows = self._q(
            """SELECT i.id, c.name FROM images i JOIN classes c ON c.id = i.class_id
               WHERE i.review != 'rejected' AND (? OR i.review = 'accepted')
                 AND (i.synthetic = 0 OR (? AND i.review = 'accepted'))
               ORDER BY i.id""",
            (int(include_pending), int(include_synthetic)),
        ).fetchall()
        return [(int(r[0]), r[1]) for r in rows]

    # -- embeddings ---------------------------------------------------------------------
    def put_embeddings(self, encoder_key: str, image_ids: Sequence[int], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(image_ids):
            raise LibraryError(f"embeddings must have shape (N={len(image_ids)}, D), not {vectors.shape}")
        # Little-endian float32 on disk, whatever the machine: libraries move between PCs.
        data = np.ascontiguousarray(vectors, dtype="<f4")
        dim = int(data.shape[1])
        with self.transaction():
            row = self._q("SELECT dim FROM embeddings WHERE encoder_key = ? LIMIT 1", (encoder_key,)).fetchone()
            if row is not None and row[0] != dim:
                raise LibraryError(
                    f"encoder {encoder_key!r} has {row[0]}-dimensional embeddings stored, not {dim}; drop them first"
                )
            try:
                self._conn().executemany(
                    "INSERT OR REPLACE INTO embeddings (encoder_key, image_id, dim, vector) VALUES (?, ?, ?, ?)",
                    ((encoder_key, int(i), dim, data[n].tobytes()) for n, i in enumerate(image_ids)),
                )
            except sqlite3.IntegrityError as exc:
                raise LibraryError(f"cannot store embeddings: unknown image id ({exc})") from exc

    def embedded_ids(self, encoder_key: str) -> np.ndarray:
        rows = self._q("SELECT image_id FROM embeddings WHERE encoder_key = ? ORDER BY image_id", (encoder_key,))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def get_embeddings(self, encoder_key: str, image_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if image_ids is None:
            rows = self._q(
                "SELECT image_id, dim, vector FROM embeddings WHERE encoder_key = ? ORDER BY image_id", (encoder_key,)
            )
        else:
            # In the order asked for; ids without an embedding are left out.
            rows = self._q(
                """SELECT e.image_id, e.dim, e.vector FROM json_each(?) j
                   JOIN embeddings e ON e.encoder_key = ? AND e.image_id = j.value ORDER BY j.key""",
                (json.dumps([int(i) for i in image_ids]), encoder_key),
            )
        # Stream the rows into one buffer and view it with one frombuffer: no per-row arrays
        # and no second copy for 20,000 x 1280 vectors (a bytearray keeps the result writable).
        ids: list[int] = []
        buf = bytearray()
        dim = None
        for image_id, row_dim, blob in rows:
            if dim is None:
                dim = row_dim
            elif row_dim != dim or len(blob) != 4 * dim:
                raise LibraryError(f"encoder {encoder_key!r} has embeddings of different sizes stored; drop them")
            ids.append(image_id)
            buf += blob
        if dim is None:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        flat = np.frombuffer(buf, dtype="<f4")
        return np.asarray(ids, dtype=np.int64), flat.reshape(len(ids), dim).astype(np.float32, copy=False)

    def drop_embeddings(self, encoder_key: str | None = None) -> None:
        with self.transaction():
            if encoder_key is None:
                self._q("DELETE FROM embeddings")
            else:
                self._q("DELETE FROM embeddings WHERE encoder_key = ?", (encoder_key,))

    def embedding_keys(self) -> dict[str, int]:
        """Encoder keys with cached embeddings and how many each has (for ``nmid stats``)."""
        rows = self._q("SELECT encoder_key, COUNT(*) FROM embeddings GROUP BY encoder_key ORDER BY encoder_key")
        return {r[0]: int(r[1]) for r in rows}

    # -- predictions, descriptions, usage -------------------------------------------------
    def add_prediction(self, prediction: PredictionRecord) -> int:
        p = prediction
        try:
            with self.transaction():
                cur = self._q(
                    """INSERT INTO predictions (image_id, predictor, label, ranking, confidence, model,
                       prompt_version, rationale, demo_ids, valid, reason, tokens_in, tokens_out, cost_usd, at)
                       VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                    (
                        int(p.image_id), p.predictor, p.label,
                        json.dumps([[str(name), float(prob)] for name, prob in p.ranking]),
                        _check_finite(p.confidence, "confidence"), p.model, p.prompt_version, p.rationale or "",
                        json.dumps([int(i) for i in p.demo_ids]), int(bool(p.valid)), p.reason or "",
                        int(p.tokens_in), int(p.tokens_out), float(p.cost_usd), p.at or _now(),
                    ),
                )
                return _rowid(cur)
        except sqlite3.IntegrityError as exc:
            raise LibraryError(f"cannot store a prediction for image {p.image_id}: {exc}") from exc

    @staticmethod
    def _prediction(row: sqlite3.Row) -> PredictionRecord:
        return PredictionRecord(
            image_id=row["image_id"],
            predictor=row["predictor"],
            label=row["label"],
            ranking=[(str(n), float(p)) for n, p in json.loads(row["ranking"])],
            confidence=row["confidence"],
            model=row["model"],
            prompt_version=row["prompt_version"],
            rationale=row["rationale"],
            demo_ids=[int(i) for i in json.loads(row["demo_ids"])],
            valid=bool(row["valid"]),
            reason=row["reason"],
            tokens_in=row["tokens_in"],
            tokens_out=row["tokens_out"],
            cost_usd=row["cost_usd"],
            id=row["id"],
            at=row["at"],
        )

    def predictions(self, image_id: int) -> list[PredictionRecord]:
        rows = self._q("SELECT * FROM predictions WHERE image_id = ? ORDER BY id DESC", (int(image_id),))
        return [self._prediction(r) for r in rows.fetchall()]

    def latest_predictions(self, predictor: str) -> dict[int, PredictionRecord]:
        rows = self._q(
            """SELECT * FROM predictions WHERE id IN
               (SELECT MAX(id) FROM predictions WHERE predictor = ? GROUP BY image_id) ORDER BY image_id""",
            (predictor,),
        ).fetchall()
        return {r["image_id"]: self._prediction(r) for r in rows}

    def add_description(self, description: DescriptionRecord) -> int:
        d = description
        try:
            with self.transaction():
                cur = self._q(
                    "INSERT INTO descriptions (image_id, model, prompt_version, at) VALUES (?, ?, ?, ?)",
                    (int(d.image_id), d.model, d.prompt_version, d.at or _now()),
                )
                desc_id = _rowid(cur)
                self._conn().executemany(
                    "INSERT INTO description_rows (description_id, position, grp, question, answer) VALUES (?,?,?,?,?)",
                    ((desc_id, n, r.group, r.question, r.answer) for n, r in enumerate(d.rows)),
                )
                return desc_id
        except sqlite3.IntegrityError as exc:
            raise LibraryError(f"cannot store a description for image {d.image_id}: {exc}") from exc

    def descriptions(self, image_id: int) -> list[DescriptionRecord]:
        heads = self._q("SELECT * FROM descriptions WHERE image_id = ? ORDER BY id DESC", (int(image_id),)).fetchall()
        result = []
        for h in heads:
            rows = self._q(
                "SELECT grp, question, answer FROM description_rows WHERE description_id = ? ORDER BY position",
                (h["id"],),
            ).fetchall()
            result.append(
                DescriptionRecord(
                    image_id=h["image_id"],
                    model=h["model"],
                    prompt_version=h["prompt_version"],
                    rows=[DescriptionRow(r[0], r[1], r[2]) for r in rows],
                    id=h["id"],
                    at=h["at"],
                )
            )
        return result

    def record_usage(self, *, kind: str, model: str, tokens_in: int, tokens_out: int, cost_usd: float, images: int = 0) -> None:
        with self.transaction():
            self._q(
                "INSERT INTO api_usage (at, kind, model, tokens_in, tokens_out, cost_usd, images) VALUES (?,?,?,?,?,?,?)",
                (_now(), kind, model, int(tokens_in), int(tokens_out), float(cost_usd), int(images)),
            )

    def total_cost(self) -> float:
        return float(self._q("SELECT COALESCE(SUM(cost_usd), 0) FROM api_usage").fetchone()[0])

    # -- splits and metadata ---------------------------------------------------------------
    def get_split(self) -> dict[int, str]:
        return {int(r[0]): r[1] for r in self._q("SELECT image_id, split FROM splits ORDER BY image_id")}

    def set_split(self, assignment: dict[int, str]) -> None:
        bad = {s for s in assignment.values() if s not in SPLITS}
        if bad:
            raise LibraryError(f"split must be one of {', '.join(SPLITS)}, not {sorted(bad)}")
        with self.transaction():
            wanted_test = [int(i) for i, s in assignment.items() if s == "test"]
            if wanted_test:
                synthetic = self._q(
                    "SELECT id FROM images WHERE synthetic = 1 AND id IN (SELECT value FROM json_each(?)) LIMIT 1",
                    (json.dumps(wanted_test),),
                ).fetchone()
                if synthetic is not None:
                    raise LibraryError(f"image {synthetic[0]} is synthetic and cannot be in the test split")
            try:
                # ON CONFLICT keeps a test assignment: the test set is fixed once defined.
                self._conn().executemany(
                    """INSERT INTO splits (image_id, split, assigned_at) VALUES (?, ?, ?)
                       ON CONFLICT (image_id) DO UPDATE SET split = excluded.split, assigned_at = excluded.assigned_at
                       WHERE splits.split != 'test'""",
                    ((int(i), s, _now()) for i, s in assignment.items()),
                )
            except sqlite3.IntegrityError as exc:
                raise LibraryError(f"cannot store the split: unknown image id ({exc})") from exc

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._q("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        text = json.dumps(value)
        with self.transaction():
            self._q("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, text))


def _copy_hashing(source: Path, target: Path) -> str:
    """Copy a file and return the sha256 of the bytes copied (one read of the source)."""
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(target, "xb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def _basename(path: str) -> str:
    """The file name of a path written on Windows or POSIX."""
    return re.split(r"[\\/]", path)[-1]
