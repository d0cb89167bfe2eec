"""Store logic shared by the SQL backends (SQLite and PostgreSQL).

Every method here speaks one SQL dialect, the common subset of SQLite and
PostgreSQL: ``?`` placeholders (the PostgreSQL backend rewrites them), integer
flags, ``ON CONFLICT`` upserts and ``RETURNING``. What differs between the two
(connections, transactions, migrations, lists of ids as one parameter, error
classes) is a small set of hooks each backend implements.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from nmid_desktop.core.errors import (
    LabelConflict,
    LabelError,
    LibraryError,
    UndoConflict,
)
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
    LabelChanges,
    LabelEvent,
    PredictionRecord,
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
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _check_finite(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        raise LabelError(f"{what} must be a finite number, not {value}")
    return value



class Row(Protocol):
    """A result row addressable by column name and by position (Row, our psycopg rows)."""

    def __getitem__(self, key: int | str) -> Any: ...


class Cursor(Protocol):
    """The part of a DB-API cursor the shared logic uses."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Any: ...


class SqlStore(Store):
    """The dialect-neutral part of a SQL library; subclasses provide the hooks below."""

    _made_dirs: set[Path]
    user: str  # who works with this store: recorded on every change; undo walks theirs
    _NO_LIMIT: int | None = None  # the LIMIT parameter meaning "all rows"

    # -- dialect hooks ------------------------------------------------------------------
    @abc.abstractmethod
    def _q(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement (``?`` placeholders) on this thread's connection."""

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
            raise LibraryError(f"{source}: cannot copy into the library: {exc.strerror or exc}") from exc
        return rel

    def _record(self, row: Row) -> ImageRecord:
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
        row = self._q(_IMAGE_SELECT + " WHERE i.sha256 = ? AND i.page = ?", (sha256, page)).fetchone()
        return None if row is None else self._record(row)

    def get_image(self, image_id: int) -> ImageRecord:
        row = self._q(_IMAGE_SELECT + " WHERE i.id = ?", (int(image_id),)).fetchone()
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
    def _class_row(self, name: str) -> Row | None:
        return self._q("SELECT * FROM classes WHERE name = ?", (name,)).fetchone()

    def _class_record(self, class_id: int) -> ClassRecord:
        row = self._q(
            """SELECT c.*, (SELECT COUNT(*) FROM images i WHERE i.class_id = c.id AND i.review != 'rejected') AS n
               FROM classes c WHERE c.id = ?""",
            (class_id,),
        ).fetchone()
        return ClassRecord(row["id"], row["name"], row["description"], row["color"], row["n"])

    def _require_class(self, name: str) -> Row:
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
            self._q("INSERT INTO classes (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, _now()))
            row = self._class_row(name)
            if row is None:  # pragma: no cover - the insert or the colleague's row is there
                raise LibraryError(f"class {name!r} could not be created")
        return int(row["id"])

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
            self._bump()
            class_id = self._class_id(name)
            self._q("UPDATE classes SET description = ?, color = ? WHERE id = ?", (description or "", color, class_id))
            return self._class_record(class_id)

    def update_class(self, name: str, *, description: str | None = None, color: str | None = None) -> ClassRecord:
        with self.transaction():
            row = self._require_class(name)
            self._bump()
            if description is not None:
                self._q("UPDATE classes SET description = ? WHERE id = ?", (description, row["id"]))
            if color is not None:
                self._q("UPDATE classes SET color = ? WHERE id = ?", (self._check_color(color), row["id"]))
            return self._class_record(row["id"])

    def rename_class(self, old: str, new: str) -> ClassRecord:
        new = validate_label(new)
        with self.transaction():
            row = self._require_class(old)
            if row["name"] == new:
                return self._class_record(row["id"])
            if self._class_row(new) is not None:
                raise LabelError(f"a class named {new!r} already exists; merge the classes instead")
            version = self._bump()
            self._q("UPDATE classes SET name = ? WHERE id = ?", (new, row["id"]))
            # No image row changes, so changes_since() cannot list them: it reports a full reload.
            self._q(
                "INSERT INTO meta (key, value) VALUES ('taxonomy_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(version),),
            )
            return self._class_record(row["id"])

    def merge_classes(self, source: str, target: str, actor: str = "") -> int:
        token = uuid.uuid4().hex
        return self._write(lambda: self._merge_classes(source, target, actor, token))

    def _merge_classes(self, source: str, target: str, actor: str, token: str) -> int:
        with self.transaction():
            done = self._op_done(token)
            if done is not None:
                return len(self._q("SELECT id FROM label_events WHERE grp = ?", (done,)).fetchall())
            src = self._require_class(source)
            version = self._bump()
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
                self._apply(image_id, target_id, row["review"], prov, version)
            self._q("DELETE FROM classes WHERE id = ?", (src["id"],))
            if group is not None:
                self._op_mark(token, group)
            return len(ids)

    # -- labels and history ---------------------------------------------------------------
    def _image_row(self, image_id: int) -> Row:
        row = self._q(_IMAGE_SELECT + " WHERE i.id = ?", (int(image_id),)).fetchone()
        if row is None:
            raise LibraryError(f"no image with id {image_id} in the library {self.root}")
        return row

    @staticmethod
    def _prov(row: Row) -> dict[str, Any]:
        return {key: row[f"label_{key}"] for key in _PROV_KEYS}

    def _insert_event(
        self,
        kind: str,
        row: Row,
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
        discarded: int = 0,
    ) -> int:
        new_name = None
        if new_class_id is not None:
            new_name = self._q("SELECT name FROM classes WHERE id = ?", (new_class_id,)).fetchone()[0]
        return self._insert(
            """INSERT INTO label_events (grp, kind, image_id, old_class_id, old_label, new_class_id, new_label,
               old_review, new_review, old_prov, new_prov, source, actor, model, prompt_version, confidence, at,
               user_name, discarded)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            (
                grp, kind, row["id"], row["class_id"], row["label"], new_class_id, new_name, row["review"],
                new_review, json.dumps(self._prov(row)), json.dumps(new_prov), source, actor or self.user, model,
                prompt_version, confidence, at, self.user, discarded,
            ),
        )

    def _apply(self, image_id: int, class_id: int | None, review: str, prov: dict[str, Any], version: int) -> None:
        """Write an image's label; every write moves its label version on (optimistic concurrency)."""
        self._q(
            """UPDATE images SET class_id = ?, review = ?, label_source = ?, label_actor = ?, label_model = ?,
               label_prompt_version = ?, label_confidence = ?, label_at = ?, label_version = label_version + 1,
               changed_version = ? WHERE id = ?""",
            (class_id, review, *(prov.get(k) for k in _PROV_KEYS), version, image_id),
        )

    def _own(self) -> tuple[str, list[Any]]:
        """SQL restricting label events to this user's (undo and redo walk one's own changes)."""
        return " AND user_name = ?", [self.user]

    def _discard_redo(self) -> None:
        """A new change after undo cuts this user's redo stack off (rows are kept for audit)."""
        own, params = self._own()
        self._q("UPDATE label_events SET discarded = 1 WHERE undone = 1 AND discarded = 0" + own, params)

    def _op_done(self, token: str) -> int | None:
        """The event id a retried operation already committed (a reply lost with a dropped connection)."""
        row = self._q("SELECT event_id FROM applied_ops WHERE token = ?", (token,)).fetchone()
        return None if row is None else int(row[0])

    def _op_mark(self, token: str, event_id: int) -> None:
        self._q("INSERT INTO applied_ops (token, event_id, at) VALUES (?, ?, ?)", (token, event_id, _now()))

    def _write(self, operation: Callable[[], T]) -> T:
        """Run one write operation; a backend with a network connection retries it after a reconnect."""
        return operation()

    def _event(self, event_id: int) -> LabelEvent:
        row = self._q(_EVENT_SELECT + " WHERE e.id = ?", (event_id,)).fetchone()
        return self._event_record(row)

    @staticmethod
    def _event_record(row: Row) -> LabelEvent:
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
            kind=row["kind"],
            user=row["user_name"],
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
        expected_version: int | None = None,
    ) -> LabelEvent:
        if source not in LABEL_SOURCES:
            raise LabelError(f"label source must be one of {', '.join(LABEL_SOURCES)}, not {source!r}")
        if review is not None and review not in REVIEW_STATES:
            raise LabelError(f"review must be one of {', '.join(REVIEW_STATES)}, not {review!r}")
        confidence = _check_finite(confidence, "confidence")
        if label is not None:
            label = validate_label(label)
        token = uuid.uuid4().hex
        event = self._write(
            lambda: self._set_label(
                image_id, label, source, actor, model, prompt_version, confidence, review, expected_version, token
            )
        )
        if event.kind == "conflict":
            raise self._conflict(event)
        return event

    def _conflict(self, refused: LabelEvent) -> LabelConflict:
        current = self.get_image(refused.image_id)
        return LabelConflict(
            f"image {current.id} was relabelled meanwhile by {current.label_actor or 'someone'}: it is now "
            f"{current.label!r} ({current.review}); your {refused.new_label!r} was not applied (kept in the history)",
            image_id=current.id,
            their_label=current.label,
            their_actor=current.label_actor or "",
            label_version=current.label_version,
        )

    def _set_label(
        self,
        image_id: int,
        label: str | None,
        source: str,
        actor: str,
        model: str | None,
        prompt_version: str | None,
        confidence: float | None,
        review: str | None,
        expected_version: int | None,
        token: str,
    ) -> LabelEvent:
        with self.transaction():
            done = self._op_done(token)
            if done is not None:
                return self._event(done)
            version = self._bump()  # first: it serialises label writers, so the row read below is current
            row = self._image_row(image_id)
            class_id = None if label is None else self._class_id(label)
            if review is None:
                review = "accepted" if source in ("expert", "import") and label is not None else "pending"
            now = _now()
            prov = (
                dict(_NO_PROV)
                if label is None
                else {"source": source, "actor": actor or self.user, "model": model, "prompt_version": prompt_version,
                      "confidence": confidence, "at": now}
            )
            stale = expected_version is not None and int(row["label_version"]) != int(expected_version)
            if not stale:
                self._discard_redo()
            # A refused change is kept as a discarded "conflict" row: both writers' intent is in the history.
            event_id = self._insert_event(
                "conflict" if stale else "label", row, class_id, review, prov, source=source, actor=actor, at=now,
                model=model, prompt_version=prompt_version, confidence=confidence, discarded=int(stale),
            )
            if not stale:
                self._apply(row["id"], class_id, review, prov, version)
            self._op_mark(token, event_id)
            return self._event(event_id)

    def set_review(self, image_id: int, review: str, *, actor: str = "") -> LabelEvent:
        if review not in REVIEW_STATES:
            raise LabelError(f"review must be one of {', '.join(REVIEW_STATES)}, not {review!r}")
        token = uuid.uuid4().hex
        return self._write(lambda: self._set_review(image_id, review, actor, token))

    def _set_review(self, image_id: int, review: str, actor: str, token: str) -> LabelEvent:
        with self.transaction():
            done = self._op_done(token)
            if done is not None:
                return self._event(done)
            row = self._image_row(image_id)
            if review == "accepted" and row["class_id"] is None:
                raise LabelError(f"image {image_id} has no label to accept; set a label first")
            version = self._bump()
            row = self._image_row(image_id)
            self._discard_redo()
            # The label's provenance (e.g. "lmm, gpt-4.1-mini") stays; the event records the reviewer.
            prov = self._prov(row)
            event_id = self._insert_event(
                "review", row, row["class_id"], review, prov, source="expert", actor=actor, at=_now()
            )
            self._apply(row["id"], row["class_id"], review, prov, version)
            self._op_mark(token, event_id)
            return self._event(event_id)

    def _resolve_class(self, class_id: int | None, name: str | None) -> int | None:
        """The class to restore: by id, or re-created by name when a merge deleted it."""
        if class_id is not None:
            return class_id
        return None if name is None else self._class_id(name)

    def _group(self, row: Row, undone: int) -> list[Row]:
        if row["grp"] is None:
            return [row]
        order = "DESC" if undone == 0 else "ASC"
        return list(self._q(
            f"SELECT * FROM label_events WHERE grp = ? AND undone = ? AND discarded = 0 ORDER BY id {order}",
            (row["grp"], undone),
        ).fetchall())

    def _check_not_overwritten(self, events: list[Row], doing: str) -> None:
        """Refuse to undo or redo over a later change of someone else's, naming their label."""
        for ev in events:
            later = self._q(
                _EVENT_SELECT + " WHERE e.image_id = ? AND e.id > ? AND e.undone = 0 AND e.discarded = 0"
                " ORDER BY e.id DESC LIMIT 1",
                (ev["image_id"], ev["id"]),
            ).fetchone()
            if later is not None:
                raise UndoConflict(
                    f"cannot {doing} your change of image {ev['image_id']}: {later['actor'] or later['user_name']} "
                    f"has since set it to {later['new_name']!r} ({later['new_review']}); nothing was changed",
                    image_id=int(ev["image_id"]),
                    their_label=later["new_name"],
                    their_actor=later["actor"] or later["user_name"],
                )

    def undo(self) -> LabelEvent | None:
        token = uuid.uuid4().hex
        return self._write(lambda: self._undo(token))

    def _undo(self, token: str) -> LabelEvent | None:
        with self.transaction():
            done = self._op_done(token)
            if done is not None:
                return self._event(done)
            own, params = self._own()
            top = self._q(
                "SELECT * FROM label_events WHERE discarded = 0 AND undone = 0" + own + " ORDER BY id DESC LIMIT 1",
                params,
            ).fetchone()
            if top is None:
                return None
            version = self._bump()
            group = self._group(top, 0)
            self._check_not_overwritten(group, "undo")
            now = _now()
            for ev in group:
                class_id = self._resolve_class(ev["old_class_id"], ev["old_label"])
                self._apply(ev["image_id"], class_id, ev["old_review"], json.loads(ev["old_prov"]), version)
                self._q("UPDATE label_events SET undone = 1, undone_at = ? WHERE id = ?", (now, ev["id"]))
            self._op_mark(token, top["id"])
            return self._event(top["id"])

    def redo(self) -> LabelEvent | None:
        token = uuid.uuid4().hex
        return self._write(lambda: self._redo(token))

    def _redo(self, token: str) -> LabelEvent | None:
        with self.transaction():
            done = self._op_done(token)
            if done is not None:
                return self._event(done)
            own, params = self._own()
            first = self._q(
                "SELECT * FROM label_events WHERE discarded = 0 AND undone = 1" + own + " ORDER BY id ASC LIMIT 1",
                params,
            ).fetchone()
            if first is None:
                return None
            version = self._bump()
            group = self._group(first, 1)
            self._check_not_overwritten(group, "redo")
            for ev in group:
                class_id = self._resolve_class(ev["new_class_id"], ev["new_label"])
                self._apply(ev["image_id"], class_id, ev["new_review"], json.loads(ev["new_prov"]), version)
                self._q("UPDATE label_events SET undone = 0, undone_at = NULL WHERE id = ?", (ev["id"],))
            if first["kind"] == "merge":
                # Redoing a merge drops the source class again (undo re-created it), if now empty.
                for name in {ev["old_label"] for ev in group if ev["old_label"] is not None}:
                    self._q(
                        """DELETE FROM classes WHERE name = ? AND NOT EXISTS
                           (SELECT 1 FROM images WHERE class_id = classes.id)""",
                        (name,),
                    )
            self._op_mark(token, first["id"])
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

    def changes_since(self, version: int) -> LabelChanges:
        # Read the version first: a change committed between the two reads is listed now and again next time
        # (harmless), never skipped.
        now = self.labels_version()
        taxonomy = int(self.get_meta("taxonomy_version", "0") or 0)
        if taxonomy > version:
            return LabelChanges(version=now, images=[], full=True)
        rows = self._q(_IMAGE_SELECT + " WHERE i.changed_version > ? ORDER BY i.id", (int(version),)).fetchall()
        return LabelChanges(version=now, images=[self._record(r) for r in rows], full=False)

    def labelled(self, *, include_pending: bool = True, include_synthetic: bool = False) -> list[tuple[int, str]]:
        rows = self._q(
            """SELECT i.id, c.name FROM images i JOIN classes c ON c.id = i.class_id
               WHERE i.review != 'rejected' AND (? = 1 OR i.review = 'accepted')
                 AND (i.synthetic = 0 OR (? = 1 AND i.review = 'accepted'))
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
                self._many(
                    """INSERT INTO embeddings (encoder_key, image_id, dim, vector) VALUES (?, ?, ?, ?)
                       ON CONFLICT (encoder_key, image_id) DO UPDATE SET dim = excluded.dim, vector = excluded.vector""",
                    ((encoder_key, int(i), dim, data[n].tobytes()) for n, i in enumerate(image_ids)),
                )
            except self._integrity_error as exc:
                raise LibraryError(f"cannot store embeddings: unknown image id ({exc})") from exc

    def get_embeddings(self, encoder_key: str, image_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if image_ids is None:
            rows = self._q(
                "SELECT image_id, dim, vector FROM embeddings WHERE encoder_key = ? ORDER BY image_id", (encoder_key,)
            )
        else:
            # In the order asked for; ids without an embedding are left out.
            table, param = self._id_table(image_ids)
            rows = self._q(
                f"""SELECT e.image_id, e.dim, e.vector FROM {table}
                   JOIN embeddings e ON e.encoder_key = ? AND e.image_id = j.value ORDER BY j.key""",
                (param, encoder_key),
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
                return self._insert(
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
        except self._integrity_error as exc:
            raise LibraryError(f"cannot store a prediction for image {p.image_id}: {exc}") from exc

    @staticmethod
    def _prediction(row: Row) -> PredictionRecord:
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
                desc_id = self._insert(
                    "INSERT INTO descriptions (image_id, model, prompt_version, at) VALUES (?, ?, ?, ?)",
                    (int(d.image_id), d.model, d.prompt_version, d.at or _now()),
                )
                self._many(
                    "INSERT INTO description_rows (description_id, position, grp, question, answer) VALUES (?,?,?,?,?)",
                    ((desc_id, n, r.group, r.question, r.answer) for n, r in enumerate(d.rows)),
                )
                return desc_id
        except self._integrity_error as exc:
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
                table, param = self._id_table(wanted_test)
                synthetic = self._q(
                    f"SELECT id FROM images WHERE synthetic = 1 AND id IN (SELECT j.value FROM {table}) LIMIT 1",
                    (param,),
                ).fetchone()
                if synthetic is not None:
                    raise LibraryError(f"image {synthetic[0]} is synthetic and cannot be in the test split")
            try:
                # ON CONFLICT keeps a test assignment: the test set is fixed once defined.
                self._many(
                    """INSERT INTO splits (image_id, split, assigned_at) VALUES (?, ?, ?)
                       ON CONFLICT (image_id) DO UPDATE SET split = excluded.split, assigned_at = excluded.assigned_at
                       WHERE splits.split != 'test'""",
                    ((int(i), s, _now()) for i, s in assignment.items()),
                )
            except self._integrity_error as exc:
                raise LibraryError(f"cannot store the split: unknown image id ({exc})") from exc

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._q("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        text = json.dumps(value)
        with self.transaction():
            self._q(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, text),
            )



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
