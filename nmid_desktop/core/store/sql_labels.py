"""Labels and their history on a SQL library: set, review, merge, undo/redo, and what changed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from nmid_desktop.core.errors import (
    LabelConflict,
    LabelError,
    LibraryError,
    UndoConflict,
)
from nmid_desktop.core.labels import validate_label
from nmid_desktop.core.store.base import (
    CLASS_KEYS,
    LABEL_SOURCES,
    REVIEW_KINDS,
    REVIEW_STATES,
    ClassRecord,
    LabelChanges,
    LabelEvent,
)
from nmid_desktop.core.store.sql_base import (
    _EVENT_SELECT,
    _IMAGE_SELECT,
    _NO_PROV,
    _PROV_KEYS,
    SqlBase,
    T,
    _check_finite,
    _DbRow,
    _now,
)


class LabelsMixin(SqlBase):
    """Taxonomy changes and labels with history; many users at once (see ``set_label``)."""

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

    def set_class_key(self, name: str, key: int | None) -> list[ClassRecord]:
        if key is not None and (isinstance(key, bool) or not isinstance(key, int) or key not in CLASS_KEYS):
            raise LabelError(f"a class key must be a digit 1-9, not {key!r}")
        # Idempotent (a retry after a lost reply finds the key already in place).
        return self._write(lambda: self._set_class_key(name, key))

    def _set_class_key(self, name: str, key: int | None) -> list[ClassRecord]:
        with self.transaction():
            self._bump()  # first: serialises writers, so the holder read below is current
            row = self._require_class(name)
            old = row["key"]
            if old == key:
                return []
            holder = None if key is None else self._q_one("SELECT id FROM classes WHERE key = ?", (key,))
            # Free the key before taking it: the unique index is checked statement by statement.
            if holder is not None:
                self._q("UPDATE classes SET key = NULL WHERE id = ?", (holder["id"],))
            self._q("UPDATE classes SET key = ? WHERE id = ?", (key, row["id"]))
            changed = [row["id"]]
            if holder is not None:
                self._q("UPDATE classes SET key = ? WHERE id = ?", (old, holder["id"]))
                changed.append(holder["id"])
            return [self._class_record(class_id) for class_id in changed]

    def delete_class(self, name: str) -> None:
        with self.transaction():
            row = self._require_class(name)
            n = int(self._q_one("SELECT COUNT(*) FROM images WHERE class_id = ?", (row["id"],))[0])
            if n:
                raise LabelError(
                    f"class {row['name']!r} still labels {n} image(s): merge it into another class, or relabel them first"
                )
            self._bump()
            self._q("DELETE FROM classes WHERE id = ?", (row["id"],))

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
            target_is_new = self._class_row(validate_label(target)) is None
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
                # The source's key rides on the event, so an undo that re-creates the class restores it.
                event_id = self._insert_event(
                    "merge", row, target_id, row["review"], prov, source="expert", actor=actor, at=now, grp=group,
                    old_prov={**prov, "class_key": src["key"]},
                )
                if group is None:
                    group = event_id
                    self._q("UPDATE label_events SET grp = ? WHERE id = ?", (group, event_id))
                self._apply(image_id, target_id, row["review"], prov, version)
            self._q("DELETE FROM classes WHERE id = ?", (src["id"],))
            if target_is_new and src["key"] is not None:
                # Merging into a new name is a rename of the source: it keeps the source's key.
                self._q("UPDATE classes SET key = ? WHERE id = ?", (src["key"], target_id))
            if group is not None:
                self._op_mark(token, group)
            return len(ids)

    # -- labels and history ---------------------------------------------------------------
    def _image_row(self, image_id: int) -> _DbRow:
        row = self._q_one(_IMAGE_SELECT + " WHERE i.id = ?", (int(image_id),))
        if row is None:
            raise LibraryError(f"no image with id {image_id} in the library {self.root}")
        return row

    @staticmethod
    def _prov(row: _DbRow) -> dict[str, Any]:
        return {key: row[f"label_{key}"] for key in _PROV_KEYS}

    def _insert_event(
        self,
        kind: str,
        row: _DbRow,
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
        old_prov: dict[str, Any] | None = None,
        new_name: str | None = None,
    ) -> int:
        """One history row; ``new_name`` is the new class's name when the caller knows it."""
        old = self._prov(row) if old_prov is None else old_prov
        if new_class_id is not None and new_name is None:
            new_name = self._q_one("SELECT name FROM classes WHERE id = ?", (new_class_id,))[0]
        return self._insert(
            """INSERT INTO label_events (grp, kind, image_id, old_class_id, old_label, new_class_id, new_label,
               old_review, new_review, old_prov, new_prov, source, actor, model, prompt_version, confidence, at,
               user_name, discarded)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            (
                grp, kind, row["id"], row["class_id"], row["label"], new_class_id, new_name, row["review"],
                new_review, json.dumps(old), json.dumps(new_prov), source, actor or self.user, model,
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
        """The event id a retried operation already committed (a reply lost with a dropped connection).

        Only a retry can find one: each operation makes a new token, so a first attempt skips
        the lookup (one round trip less for every label change on a shared library).
        """
        if not self._retrying():
            return None
        row = self._q_one("SELECT event_id FROM applied_ops WHERE token = ?", (token,))
        return None if row is None else int(row[0])

    def _op_mark(self, token: str, event_id: int) -> None:
        self._q("INSERT INTO applied_ops (token, event_id, at) VALUES (?, ?, ?)", (token, event_id, _now()))

    def _write(self, operation: Callable[[], T]) -> T:
        """Run one write operation; a backend with a network connection retries it after a reconnect."""
        return operation()

    def _retrying(self) -> bool:
        """Whether ``_write`` is running its operation again (after a reconnect) in this thread."""
        return False

    def _event(self, event_id: int) -> LabelEvent:
        row = self._q_one(_EVENT_SELECT + " WHERE e.id = ?", (event_id,))
        return self._event_record(row)

    @staticmethod
    def _event_record(row: _DbRow) -> LabelEvent:
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
                new_name=label,  # class_id is the class of exactly this name
            )
            if not stale:
                self._apply(row["id"], class_id, review, prov, version)
            self._op_mark(token, event_id)
            return self._event(event_id)

    def set_review(self, image_id: int, review: str, *, actor: str = "", kind: str = "review") -> LabelEvent:
        if review not in REVIEW_STATES:
            raise LabelError(f"review must be one of {', '.join(REVIEW_STATES)}, not {review!r}")
        if kind not in REVIEW_KINDS:
            raise LabelError(f"a review's history kind must be one of {', '.join(REVIEW_KINDS)}, not {kind!r}")
        token = uuid.uuid4().hex
        return self._write(lambda: self._set_review(image_id, review, actor, token, kind))

    def _set_review(self, image_id: int, review: str, actor: str, token: str, kind: str = "review") -> LabelEvent:
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
                kind, row, row["class_id"], review, prov, source="expert", actor=actor, at=_now()
            )
            self._apply(row["id"], row["class_id"], review, prov, version)
            self._op_mark(token, event_id)
            return self._event(event_id)

    def _resolve_class(self, class_id: int | None, name: str | None) -> int | None:
        """The class to restore: by id, or re-created by name when a merge deleted it."""
        if class_id is not None:
            return class_id
        return None if name is None else self._class_id(name)

    def _group(self, row: _DbRow, undone: int) -> list[_DbRow]:
        if row["grp"] is None:
            return [row]
        order = "DESC" if undone == 0 else "ASC"
        return list(self._q(
            f"SELECT * FROM label_events WHERE grp = ? AND undone = ? AND discarded = 0 ORDER BY id {order}",
            (row["grp"], undone),
        ).fetchall())

    def _check_not_overwritten(self, events: list[_DbRow], doing: str) -> None:
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
                old_prov = json.loads(ev["old_prov"])
                if ev["old_class_id"] is None and class_id is not None:
                    self._restore_key(class_id, old_prov.get("class_key"))
                self._apply(ev["image_id"], class_id, ev["old_review"], old_prov, version)
                self._q("UPDATE label_events SET undone = 1, undone_at = ? WHERE id = ?", (now, ev["id"]))
            self._op_mark(token, top["id"])
            return self._event(top["id"])

    def _restore_key(self, class_id: int, key: object) -> None:
        """Give a class re-created by an undone merge its old key back, unless another class holds it now."""
        if not isinstance(key, int) or key not in CLASS_KEYS:
            return
        if self._q_one("SELECT 1 FROM classes WHERE key = ? AND id != ?", (key, class_id)) is None:
            self._q("UPDATE classes SET key = ? WHERE id = ?", (key, class_id))

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
        return int(self._q_one("SELECT value FROM meta WHERE key = 'labels_version'")[0])

    def changes_since(self, version: int) -> LabelChanges:
        # Read the version first: a change committed between the two reads is listed now and again next time
        # (harmless), never skipped.
        now = self.labels_version()
        taxonomy = int(str(self.get_meta("taxonomy_version", "0") or 0))
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
