"""``nmid library copy``: move a whole library between backends (SQLite <-> PostgreSQL).

Rows are copied table by table with their ids (history, splits and embeddings refer
to image ids), image files stored in the library are copied into the destination's
folder (content-addressed, checked against their sha256), and the destination is
written in ONE transaction. Before it, the destination is marked ``copy_state =
incomplete`` in a transaction of its own; the marker is removed in the big one. So an
interrupted copy (Ctrl+C, a crash, the server gone) leaves the destination empty and
marked unusable, never half valid: ``open_library`` refuses it until it is copied again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmid_desktop.core.errors import LibraryError
from nmid_desktop.core.jobs import Progress
from nmid_desktop.core.store.base import Store
from nmid_desktop.core.store.sql import SqlStore

# Parents before children (foreign keys are checked as rows arrive).
TABLES = (
    "classes", "images", "label_events", "embeddings", "predictions", "descriptions", "description_rows",
    "api_usage", "splits",
)
# Meta keys that belong to the destination itself, not to the library's content.
_OWN_META = {"library_id", "copy_state"}
_CHUNK = 500


@dataclass(frozen=True)
class CopyReport:
    """What a copy moved."""

    rows: dict[str, int]
    files_copied: int
    files_present: int
    referenced: int  # images that point at original files outside the library (not copied)

    def summary(self) -> str:
        rows = ", ".join(f"{t} {n}" for t, n in self.rows.items() if n)
        text = f"copied {rows or 'nothing'}; image files: {self.files_copied} copied, {self.files_present} already there"
        if self.referenced:
            text += (
                f"; {self.referenced} images only reference their original files (imported without copying): "
                "other PCs can read them only where those paths exist"
            )
        return text


def _sql_store(store: Store, what: str) -> SqlStore:
    if not isinstance(store, SqlStore):
        raise LibraryError(f"the {what} library {store.location} is not a SQL library and cannot be copied")
    return store


def _copy_file(source: Path, target: Path, sha256: str) -> bool:
    """Copy one content-addressed file unless present; False when it was already there."""
    if target.is_file():
        return False
    if not source.is_file():
        raise LibraryError(f"image file {source} is missing from the source library; nothing was copied")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{sha256}.{uuid.uuid4().hex[:8]}.tmp"
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as src, open(tmp, "xb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != sha256:
            raise LibraryError(f"image file {source} does not match its sha256 (damaged?); nothing was copied")
        os.replace(tmp, target)
    except OSError as exc:
        raise LibraryError(f"cannot copy {source} to {target}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return True


def copy_library(source: Store, target: Store) -> Generator[Progress, None, CopyReport]:
    """Copy everything in ``source`` into the empty library ``target`` (a job: yields progress).

    Raises:
        LibraryError: ``target`` is not empty, or a stored image file is missing or damaged.
    """
    src = _sql_store(source, "source")
    dst = _sql_store(target, "destination")
    if dst.count_images() or dst.classes() or dst.history(limit=1):
        raise LibraryError(f"the destination {dst.location} is not empty; copy into a new library")
    totals = {t: int(src._q(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in TABLES}
    total = sum(totals.values())
    dst.set_meta("copy_state", "incomplete")  # committed on its own: survives an interrupted copy
    done = 0
    files_copied = files_present = referenced = 0
    yield Progress(0, total, "copying")
    with dst.transaction():
        for table in TABLES:
            cur = src._q(f"SELECT * FROM {table}")
            names = [str(d[0]) for d in cur.description]  # type: ignore[attr-defined]
            insert = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            while True:
                rows: list[Any] = cur.fetchmany(_CHUNK)  # type: ignore[attr-defined]
                if not rows:
                    break
                values = [tuple(r) for r in rows]
                if table == "images":
                    col = {n: i for i, n in enumerate(names)}
                    for row in values:
                        if not row[col["stored"]]:
                            referenced += 1
                            continue
                        rel = str(row[col["path"]])
                        if _copy_file(src.root / rel, dst.root / rel, str(row[col["sha256"]])):
                            files_copied += 1
                        else:
                            files_present += 1
                dst._many(insert, values)
                done += len(values)
                yield Progress(done, total, f"copying {table}")
        for key, value in src._q("SELECT key, value FROM meta").fetchall():
            if key not in _OWN_META:
                dst._q(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
        loaded = getattr(dst, "after_bulk_load", None)
        if loaded is not None:
            loaded()
        dst._q("DELETE FROM meta WHERE key = 'copy_state'")
    return CopyReport(totals, files_copied, files_present, referenced)
