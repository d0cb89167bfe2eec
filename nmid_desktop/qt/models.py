"""Qt item models over plain rows fetched by workers.

:class:`LibraryModel` is the library browser's model. It pages: the ids of every
row listed (8 bytes each), full rows only for the pages painted lately, and no
pixels: a thumbnail is asked for only when the view paints its row, made by the
thumbnail worker, and kept in a bounded cache, so scrolling through a million
images never holds a million rows or thumbnails.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
from PySide6.QtCore import (
    QAbstractListModel,
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSize,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QColor, QPixmap

from nmid_desktop.qt.imaging import SOURCE_NAMES, gray_pixmap
from nmid_desktop.workspace.browse import BrowserRow
from nmid_desktop.workspace.display import ThumbnailQueue, ThumbRequest

ImageIdRole = Qt.ItemDataRole.UserRole + 1
LabelRole = Qt.ItemDataRole.UserRole + 2


_LIBRARY_ROLES = frozenset({
    Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.DecorationRole, Qt.ItemDataRole.ToolTipRole,
    Qt.ItemDataRole.ForegroundRole, Qt.ItemDataRole.SizeHintRole, ImageIdRole, LabelRole,
})


class LibraryModel(QAbstractListModel):
    """Rows of library images, fetched page by page, with lazily loaded thumbnails.

    The model never reads the store: the browser's worker feeds it. A query starts with
    its first page of rows (:meth:`append_page`), then the store's count
    (:meth:`set_total`: the view lays out every row once, placeholders included), then
    the ids of the rest in big chunks (:meth:`append_ids`, 8 bytes a row: a million rows
    are 8 MB). Full rows are kept only for the pages painted lately; a page painted
    without its rows is asked for by its ids (:attr:`pages_requested`, answered with
    :meth:`fill_page`) and shows placeholders until it arrives. :meth:`set_rows` gives
    the model every row at once and keeps them all (small lists, tests).

    Args:
        requests: Where thumbnail requests go (served by the thumbnail worker).
        thumb_size: Thumbnail side in pixels.
        cache_items: Pixmaps kept in memory (least recently painted are dropped).
        page_size: Rows per page.
        cached_pages: Pages of full rows kept (least recently painted are dropped).
    """

    thumbnails_requested = Signal(int)  # how many were queued (for tests and the benchmark)
    pages_requested = Signal(object)  # [(page index, its image ids), ...]: pages painted without rows

    def __init__(self, requests: ThumbnailQueue, thumb_size: int = 112, cache_items: int = 1500,
                 parent: QObject | None = None, *, page_size: int = 200, cached_pages: int = 100) -> None:
        super().__init__(parent)
        self._ids = array("q")
        self._pages: OrderedDict[int, list[BrowserRow]] = OrderedDict()
        self._row_of: dict[int, int] = {}  # image id -> row, for the rows of cached pages
        self._asked: set[int] = set()
        self._want: set[int] = set()
        self._pinned = False
        self._total = 0
        self._n = 0  # rows the view sees: changed only between begin/end calls
        self._at_end = True
        self._fetching = False
        self.page_size = page_size
        self._cached_pages = cached_pages
        # Keyed by content (sha256, page), never by image id: ids repeat across libraries, and
        # after switching library the same id is another image.
        self._pixmaps: OrderedDict[tuple[str, int], QPixmap] = OrderedDict()
        self._unreadable: set[tuple[str, int]] = set()
        self._pending: dict[int, ThumbRequest] = {}
        self._requested: set[int] = set()
        self._requests = requests
        self.thumb_size = thumb_size
        self._cache_items = cache_items
        self._placeholder = QPixmap(thumb_size, thumb_size)
        self._placeholder.fill(QColor("#303134"))
        self._broken = QPixmap(thumb_size, thumb_size)
        self._broken.fill(QColor("#5c2b29"))
        self.colors: dict[str, QColor] = {}
        # Requests are batched: painting 60 rows queues one batch, not 60 cross-thread calls.
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(15)
        self._flush_timer.timeout.connect(self._flush_requests)
        # Pages to read again are asked for after painting, never from inside data().
        self._page_timer = QTimer(self)
        self._page_timer.setSingleShot(True)
        self._page_timer.setInterval(0)
        self._page_timer.timeout.connect(self._ask_pages)

    # -- rows --------------------------------------------------------------------------------------
    def _clear(self, at_end: bool) -> None:
        self._ids = array("q")
        self._pages.clear()
        self._row_of.clear()
        self._asked.clear()
        self._want.clear()
        self._at_end = at_end
        self._fetching = False
        self._total = 0
        self._n = 0
        self._pending.clear()
        self._requested.clear()
        self._requests.clear()

    def reset(self) -> None:
        """Forget every row; the next page is fetched when the view asks (a new query)."""
        self.beginResetModel()
        self._clear(at_end=False)
        self._pinned = False
        self.endResetModel()

    def set_rows(self, rows: Sequence[BrowserRow]) -> None:
        """Replace all rows with these, all kept (pixmaps of images still present are kept)."""
        self.beginResetModel()
        self._clear(at_end=True)
        self._pinned = True
        self._add_rows(list(rows))
        self._total = len(self._ids)
        self._n = self._total
        self.endResetModel()

    def _add_rows(self, rows: list[BrowserRow]) -> None:
        first = len(self._ids)
        self._ids.extend(row.image_id for row in rows)
        for start in range(0, len(rows), self.page_size):
            self._store_page((first + start) // self.page_size, rows[start:start + self.page_size])

    def _store_page(self, page: int, rows: list[BrowserRow]) -> None:
        old = self._pages.get(page)
        if old is not None and len(old) >= len(rows):
            rows = rows + old[len(rows):]
        self._pages[page] = rows
        self._pages.move_to_end(page)
        base = page * self.page_size
        for i, row in enumerate(rows):
            self._row_of[row.image_id] = base + i
        while not self._pinned and len(self._pages) > self._cached_pages:
            gone, gone_rows = self._pages.popitem(last=False)
            self._asked.discard(gone)
            for row in gone_rows:
                self._row_of.pop(row.image_id, None)

    def append_page(self, rows: Sequence[BrowserRow], at_end: bool) -> None:
        """The first rows of a query (or the next ones, page-aligned), with their ids."""
        self._fetching = False
        if len(self._ids) % self.page_size:
            raise ValueError("a page was appended after a short page")  # pragma: no cover - a caller's bug
        first = len(self._ids)
        self._add_rows(list(rows))
        self._grow(first, at_end)

    def append_ids(self, ids: Sequence[int], at_end: bool) -> None:
        """The ids of the next rows (their rows are read when painted, :attr:`page_requested`)."""
        first = len(self._ids)
        self._ids.extend(int(i) for i in ids)
        self._grow(first, at_end)
        # Rows painted as placeholders before their ids arrived: ask for their pages now.
        if self._want and not self._page_timer.isActive():
            self._page_timer.start()

    def set_total(self, total: int) -> None:
        """How many rows the query lists (the store's count): the view lays them all out once.

        Rows whose ids have not arrived yet show placeholders. Growing the row count once, not
        page by page, matters: a view lays out every row again whenever rows are inserted.
        """
        if total > self._total:
            old = self._n
            self._total = total
            if total > old:
                self.beginInsertRows(QModelIndex(), old, total - 1)
                self._n = total
                self.endInsertRows()

    def _grow(self, first: int, at_end: bool) -> None:
        self._at_end = at_end
        shown = max(self._total, first)
        if len(self._ids) > shown:
            self.beginInsertRows(QModelIndex(), shown, len(self._ids) - 1)
            self._total = len(self._ids) if at_end else self._total
            self._n = len(self._ids)
            self.endInsertRows()
        elif at_end and len(self._ids) < shown:
            # Fewer rows than counted (images deleted meanwhile): drop the rest.
            self.beginRemoveRows(QModelIndex(), len(self._ids), shown - 1)
            self._total = len(self._ids)
            self._n = self._total
            self.endRemoveRows()
        if first < len(self._ids) and first < shown:
            self.dataChanged.emit(self.index(first), self.index(min(len(self._ids), shown) - 1))

    def fill_page(self, page: int, rows: Sequence[BrowserRow]) -> None:
        """A page read again by its ids: replace the placeholders."""
        self._asked.discard(page)
        first = page * self.page_size
        last = min(len(self._ids), first + self.page_size) - 1
        if last < first:
            return
        expected = self._ids[first:last + 1].tolist()
        by_id = {row.image_id: row for row in rows}
        kept = [by_id[i] for i in expected if i in by_id]
        if len(kept) != len(expected):
            return  # an image was deleted meanwhile: the next refresh lists the rest
        self._store_page(page, kept)
        self.dataChanged.emit(self.index(first), self.index(last))

    @property
    def fetching(self) -> bool:
        """The first page was asked for and has not arrived."""
        return self._fetching

    def start_fetching(self) -> None:
        """Mark the first page as on its way."""
        self._fetching = True

    @property
    def complete(self) -> bool:
        """Every id of the query is listed."""
        return self._at_end

    def _ask_pages(self) -> None:
        waiting: set[int] = set()
        batch: list[tuple[int, list[int]]] = []
        for page in sorted(self._want - self._asked - set(self._pages)):
            first = page * self.page_size
            ids = self._ids[first:first + self.page_size].tolist()
            if len(ids) < min(self.page_size, self._n - first):
                waiting.add(page)  # its ids are on their way (append_ids asks again)
            elif ids:
                self._asked.add(page)
                batch.append((page, ids))
        self._want = waiting
        if batch:
            # One request for every page painted since the last: the browser reads them in one
            # job, which supersedes a batch still queued for pages scrolled past.
            self.pages_requested.emit(batch)

    def unask(self, pages: Sequence[int]) -> None:
        """These pages' request was dropped: the next paint asks for them again."""
        self._asked.difference_update(pages)

    def _row(self, row: int) -> BrowserRow | None:
        page, offset = divmod(row, self.page_size)
        rows = self._pages.get(page)
        if rows is None:
            if page not in self._asked:
                self._want.add(page)
                if not self._page_timer.isActive():
                    self._page_timer.start()
            return None
        self._pages.move_to_end(page)
        return rows[offset] if offset < len(rows) else None

    def row_data(self, row: int) -> BrowserRow | None:
        """The plain row at ``row``; None while its page is not in memory."""
        if not 0 <= row < len(self._ids):
            return None
        page, offset = divmod(row, self.page_size)
        rows = self._pages.get(page)
        return rows[offset] if rows is not None and offset < len(rows) else None

    def rows(self) -> list[BrowserRow]:
        """The rows in memory, in order (every row of a list smaller than the page cache)."""
        return [row for page in sorted(self._pages) for row in self._pages[page]]

    def ids(self) -> list[int]:
        """The image ids of every row listed, in order."""
        return self._ids.tolist()

    def row_of(self, image_id: int) -> int | None:
        """Row index of an image, None when not listed."""
        row = self._row_of.get(image_id)
        if row is not None:
            return row
        try:
            return self._ids.index(image_id)
        except ValueError:
            return None

    def update_row(self, row: BrowserRow) -> None:
        """Replace one image's row in place (after a label change)."""
        index = self._row_of.get(row.image_id)
        if index is None:
            return
        page, offset = divmod(index, self.page_size)
        self._pages[page][offset] = row
        model_index = self.index(index)
        self.dataChanged.emit(model_index, model_index)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else self._n

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role not in _LIBRARY_ROLES:  # font, alignment, background, check state: the view's defaults
            return None
        row_index = index.row()
        if not 0 <= row_index < self._n or not index.isValid():
            return None
        if role == Qt.ItemDataRole.SizeHintRole:
            return QSize(self.thumb_size + 16, self.thumb_size + 30)
        if role == ImageIdRole:
            return self._ids[row_index] if row_index < len(self._ids) else None
        row = self._row(row_index)
        if row is None:  # its page is on its way
            if role == Qt.ItemDataRole.DisplayRole:
                return "…"
            if role == Qt.ItemDataRole.DecorationRole:
                return self._placeholder
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            label = row.label or "unlabelled"
            mark = " ✓" if row.review == "accepted" and row.label else " ?" if row.review == "pending" and row.label else ""
            return f"{label}{mark}"
        if role == Qt.ItemDataRole.DecorationRole:
            return self._pixmap_for(row)
        if role == Qt.ItemDataRole.ToolTipRole:
            source = SOURCE_NAMES.get(row.source or "", row.source or "")
            lines = [f"{row.name}  (image {row.image_id})", f"label: {row.label or '—'}"]
            if row.label:
                who = f" ({row.actor})" if row.actor else ""
                lines.append(f"set by: {source}{who} · {row.review}")
            if row.synthetic:
                lines.append("synthetic image")
            if row.note:
                lines.append(row.note)
            return "\n".join(lines)
        if role == Qt.ItemDataRole.ForegroundRole:
            if row.label is None:
                return QColor("#9aa0a6")
            return self.colors.get(row.label)
        if role == LabelRole:
            return row.label
        return None

    # -- thumbnails -----------------------------------------------------------------------------------
    def _pixmap_for(self, row: BrowserRow) -> QPixmap:
        key = (row.sha256, row.page)
        pixmap = self._pixmaps.get(key)
        if pixmap is not None:
            self._pixmaps.move_to_end(key)
            return pixmap
        if key in self._unreadable:
            return self._broken
        if row.image_id not in self._requested:
            self._requested.add(row.image_id)
            self._pending[row.image_id] = ThumbRequest(
                row.image_id, row.sha256, row.page, row.path, row.crop_box, self.thumb_size
            )
            if not self._flush_timer.isActive():
                self._flush_timer.start()
        return self._placeholder

    def _flush_requests(self) -> None:
        if not self._pending:
            return
        requests = list(self._pending.values())
        self._pending.clear()
        self._requests.put_many(requests)
        self.thumbnails_requested.emit(len(requests))

    def forget_requests(self) -> None:
        """Rows scrolled away need no thumbnail any more: drop queued requests.

        Rows painted again are requested again.
        """
        self._pending.clear()
        self._requested.clear()
        self._requests.clear()

    def add_thumbnails(self, items: Sequence[tuple[ThumbRequest, np.ndarray | None]]) -> None:
        """Thumbnails made by the worker: convert to pixmaps (GUI thread) and repaint their rows."""
        changed: list[int] = []
        for request, thumb in items:
            if request.size != self.thumb_size:
                continue
            key = (request.sha256, request.page)
            row = self._row_of.get(request.image_id)
            listed = None if row is None else self.row_data(row)
            current = listed is not None and (listed.sha256, listed.page) == key
            if current:
                self._requested.discard(request.image_id)
            if thumb is None:
                self._unreadable.add(key)
            else:
                self._pixmaps[key] = gray_pixmap(thumb)
                self._pixmaps.move_to_end(key)
            if current and row is not None:
                changed.append(row)
        while len(self._pixmaps) > self._cache_items:
            self._pixmaps.popitem(last=False)
        if changed:
            top, bottom = min(changed), max(changed)
            self.dataChanged.emit(self.index(top), self.index(bottom), [Qt.ItemDataRole.DecorationRole])

    @property
    def cached_thumbnails(self) -> int:
        """Pixmaps held now."""
        return len(self._pixmaps)


class BatchTableModel(QAbstractTableModel):
    """The rows of a batch as a table; a row is replaced when the model's answer arrives."""

    HEADERS = ("Image", "Label before", "Local", "Conf.", "Margin", "Model", "Agree", "Written (pending)")

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[Any] = []
        self._row_of: dict[int, int] = {}

    def clear(self) -> None:
        """Remove every row."""
        self.beginResetModel()
        self._rows, self._row_of = [], {}
        self.endResetModel()

    def upsert(self, row: Any) -> None:
        """Add a BatchRow, or replace the one of the same image."""
        index = self._row_of.get(row.image_id)
        if index is None:
            position = len(self._rows)
            self.beginInsertRows(QModelIndex(), position, position)
            self._rows.append(row)
            self._row_of[row.image_id] = position
            self.endInsertRows()
        else:
            self._rows[index] = row
            self.dataChanged.emit(self.index(index, 0), self.index(index, len(self.HEADERS) - 1))

    def set_rows(self, rows: Sequence[Any]) -> None:
        """Replace all rows (the batch's final summary)."""
        self.beginResetModel()
        self._rows = list(rows)
        self._row_of = {r.image_id: i for i, r in enumerate(self._rows)}
        self.endResetModel()

    def rows(self) -> list[Any]:
        """All rows."""
        return list(self._rows)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.HEADERS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            values = (
                row.name,
                row.label or "",
                row.local or "",
                "" if row.local_confidence is None else f"{row.local_confidence:.0%}",
                "" if row.margin is None else f"{row.margin:.2f}",
                row.model or row.model_note,
                {True: "✓", False: "≠", None: ""}[row.agree],
                row.written or "",
            )
            return values[column]
        if role == Qt.ItemDataRole.ForegroundRole:
            if column == 6 and row.agree is False:
                return QColor("#fcad70")
            if column == 6 and row.agree is True:
                return QColor("#81c995")
        if role == Qt.ItemDataRole.ToolTipRole and column == 5 and row.model_note:
            return row.model_note
        if role == ImageIdRole:
            return row.image_id
        return None
