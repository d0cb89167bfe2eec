"""The base of the shared SQL logic: dialect hooks, images, taxonomy lookups (see ``sql.py``)."""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import math
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from nmid_desktop.core.errors import (
    LabelError,
    LibraryError,
)
from nmid_desktop.core.labels import validate_label
from nmid_desktop.core.store.base import (
    CLASS_KEYS,
    ClassRecord,
    ImageFilter,
    ImageRecord,
    Store,
)

IMAGES_DIR = "images"
T = TypeVar("T")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")

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


def _in_order(by_id: dict[int, T], ids: Sequence[int]) -> list[T]:
    """The values of ``by_id`` in the order of ``ids`` (ids not found are left out)."""
    return [by_id[int(i)] for i in ids if int(i) in by_id]


def _check_finite(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        raise LabelError(f"{what} must be a finite number, not {value}")
    return value



class _DbRow(Protocol):
    """A result row addressable by column name and by position (_DbRow, our psycopg rows)."""

    def __getitem__(self, key: int | str) -> Any: ...


class _DbCursor(Protocol):
    """The part of a DB-API cursor the shared logic uses."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Any: ...


class SqlBase(Store):
    """The dialect hooks, images and taxonomy lookups that the label and record parts build on."""

    _made_dirs: set[Path]
    user: str  # who works with this store: recorded on every change; undo walks theirs
    _NO_LIMIT: int | None = None  # the LIMIT parameter meaning "all rows"

    # -- dialect hooks ------------------------------------------------------------------
    @abc.abstractmethod
    def _q(self, sql: str, params: Sequence[Any] = ()) -> _DbCursor:
        """Run one statement (``?`` placeholders) on this thread's connection."""

    def _q_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement and return its first row (or None); nothing is left to iterate."""
        return self._q(sql, params).fetchone()

    @abc.abstractmethod
    def _insert(self, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT into a table with an ``id`` column; returns the new id."""

    @abc.abstractmethod
    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows."""

    @abc.abstractmethod
    def _id_table(self, ids: Sequence[int]) -> tuple[str, Any]:
        """A FROM item ``j`` with columns ``value`` (an id) and ``key`` (its position), and its parameter."""

    @property
    @abc.abstractmethod
    def _integrity_error(self) -> type[Exception]:
        """The driver's exception for a violated constraint."""

    def _insert_one(self, sql: str, params: Sequence[Any]) -> int:
        """One INSERT that is a whole change on its own (all or nothing, never retried)."""
        with self.transaction():
            return self._insert(sql, params)

    def _bump(self) -> int:
        """Move the labels version on; returns the new value. Its row lock serialises label writers."""
        row = self._q(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'labels_version' RETURNING value"
        ).fetchone()
        return int(row[0])

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
            row = self._q_one("SELECT id FROM images WHERE sha256 = ? AND page = ?", (sha256, page))
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
                new_id = self._insert(
                    """INSERT INTO images (sha256, page, path, stored, original_path, original_name, width,
                       height, n_pages, dtype, pixel_size_m, crop_x0, crop_y0, crop_x1, crop_y1, synthetic,
                       source_image_id, added_at, review) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'pending')""",
                    (
                        sha256, page, path_text, int(copy), str(original), _basename(str(original)), int(width),
                        int(height), int(n_pages), str(dtype), pixel_size_m, *crop, int(bool(synthetic)),
                        source_image_id, _now(),
                    ),
                )
            except self._integrity_error as exc:
                raise LibraryError(f"{source}: cannot add image: {exc} (unknown source image {source_image_id}?)") from exc
            return new_id, True

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
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise LibraryError(
                    f"{source}: cannot copy into the library: the disk holding {self.root} is full "
                    f"({exc.strerror}); free some space and import again"
                ) from None
            raise LibraryError(f"{source}: cannot copy into the library: {exc.strerror or exc}") from exc
        return rel

    def _record(self, row: _DbRow) -> ImageRecord:
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
            label_version=row["label_version"],
        )

    def find_image(self, sha256: str, page: int = 0) -> ImageRecord | None:
        row = self._q_one(_IMAGE_SELECT + " WHERE i.sha256 = ? AND i.page = ?", (sha256, page))
        return None if row is None else self._record(row)

    def get_image(self, image_id: int) -> ImageRecord:
        row = self._q_one(_IMAGE_SELECT + " WHERE i.id = ?", (int(image_id),))
        if row is None:
            raise LibraryError(f"no image with id {image_id} in the library {self.root}")
        return self._record(row)

    def _where(self, flt: ImageFilter | None) -> tuple[str, list[Any]]:
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
            # One parameter however many ids there are (SQLite caps parameters).
            table, param = self._id_table(flt.ids)
            clauses.append(f"i.id IN (SELECT j.value FROM {table})")
            params.append(param)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def images(self, flt: ImageFilter | None = None, *, limit: int | None = None, offset: int = 0) -> list[ImageRecord]:
        where, params = self._where(flt)
        sql = _IMAGE_SELECT + where + " ORDER BY i.id LIMIT ? OFFSET ?"
        rows = self._q(sql, [*params, self._NO_LIMIT if limit is None else int(limit), int(offset)]).fetchall()
        return [self._record(r) for r in rows]

    def count_images(self, flt: ImageFilter | None = None) -> int:
        where, params = self._where(flt)
        sql = "SELECT COUNT(*) FROM images i LEFT JOIN classes c ON c.id = i.class_id" + where
        return int(self._q_one(sql, params)[0])

    def set_crop_box(self, image_id: int, crop_box: tuple[int, int, int, int] | None) -> None:
        with self.transaction():
            image = self.get_image(image_id)
            crop = self._check_crop(crop_box, image.width, image.height, f"image {image_id}")
            self._q(
                "UPDATE images SET crop_x0 = ?, crop_y0 = ?, crop_x1 = ?, crop_y1 = ? WHERE id = ?",
                (*crop, image.id),
            )

    # -- taxonomy -----------------------------------------------------------------------
    def _class_row(self, name: str) -> _DbRow | None:
        return self._q_one("SELECT * FROM classes WHERE name = ?", (name,))

    def _class_record(self, class_id: int) -> ClassRecord:
        row = self._q(
            """SELECT c.*, (SELECT COUNT(*) FROM images i WHERE i.class_id = c.id AND i.review != 'rejected') AS n
               FROM classes c WHERE c.id = ?""",
            (class_id,),
        ).fetchone()
        return ClassRecord(row["id"], row["name"], row["description"], row["color"], row["n"], row["key"])

    def _require_class(self, name: str) -> _DbRow:
        row = self._class_row(validate_label(name))
        if row is None:
            raise LabelError(f"no class named {name!r} in this library")
        return row

    def _class_id(self, name: str) -> int:
        """The id of a class, created if missing (caller holds a transaction)."""
        name = validate_label(name)
        row = self._class_row(name)
        if row is None:
            # DO NOTHING: a colleague may create the same class at the same moment.
            # Class creation runs after _bump() (its row lock serialises writers), so the
            # lowest free key read here is still free at the insert.
            self._q(
                "INSERT INTO classes (name, created_at, key) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, _now(), self._free_key()),
            )
            row = self._class_row(name)
            if row is None:  # pragma: no cover - the insert or the colleague's row is there
                raise LibraryError(f"class {name!r} could not be created")
        return int(row["id"])

    def _free_key(self) -> int | None:
        """The lowest number key no class holds; None when 1-9 are all taken."""
        used = {int(r[0]) for r in self._q("SELECT key FROM classes WHERE key IS NOT NULL").fetchall()}
        return next((k for k in CLASS_KEYS if k not in used), None)

    @staticmethod
    def _check_color(color: str) -> str:
        color = (color or "").strip()
        if color and not _COLOR.match(color):
            raise LabelError(f"colour {color!r} must look like #rrggbb")
        return color.lower()

    def classes(self) -> list[ClassRecord]:
        rows = self._q(
            """SELECT c.id, c.name, c.description, c.color, c.key, COUNT(i.id) AS n FROM classes c
               LEFT JOIN images i ON i.class_id = c.id AND i.review != 'rejected'
               GROUP BY c.id ORDER BY c.name"""
        ).fetchall()
        return [ClassRecord(r["id"], r["name"], r["description"], r["color"], r["n"], r["key"]) for r in rows]


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
