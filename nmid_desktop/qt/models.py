"""Qt item models over plain rows fetched by workers.

:class:`LibraryModel` is the library browser's model. It holds one small frozen
row per image (20,000 rows are a few megabytes) and no pixels: a thumbnail is
asked for only when the view paints its row, made by the thumbnail worker, and
kept in a bounded cache, so scrolling through 20,000 images never loads 20,000.
"""

from __future__ import annotations

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


class LibraryModel(QAbstractListModel):
    """Rows of library images with lazily loaded thumbnails.

    Args:
        requests: Where thumbnail requests go (served by the thumbnail worker).
        thumb_size: Thumbnail side in pixels.
        cache_items: Pixmaps kept in memory (least recently painted are dropped).
    """

    thumbnails_requested = Signal(int)  # how many were queued (for tests and the benchmark)

    def __init__(self, requests: ThumbnailQueue, thumb_size: int = 112, cache_items: int = 1500,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[BrowserRow] = []
        self._row_of: dict[int, int] = {}
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

    # -- rows --------------------------------------------------------------------------------------
    def set_rows(self, rows: Sequence[BrowserRow]) -> None:
        """Replace all rows (pixmaps of images still present are kept)."""
        self.beginResetModel()
        self._rows = list(rows)
        self._row_of = {row.image_id: i for i, row in enumerate(self._rows)}
        self._pending.clear()
        self._requested.clear()
        self._requests.clear()
        self.endResetModel()

    def row_data(self, row: int) -> BrowserRow:
        """The plain row at ``row``."""
        return self._rows[row]

    def rows(self) -> list[BrowserRow]:
        """All rows, in order."""
        return list(self._rows)

    def row_of(self, image_id: int) -> int | None:
        """Row index of an image, None when not listed."""
        return self._row_of.get(image_id)

    def update_row(self, row: BrowserRow) -> None:
        """Replace one image's row in place (after a label change)."""
        index = self._row_of.get(row.image_id)
        if index is None:
            return
        self._rows[index] = row
        model_index = self.index(index)
        self.dataChanged.emit(model_index, model_index)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row = self._rows[index.row()]
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
        if role == Qt.ItemDataRole.SizeHintRole:
            return QSize(self.thumb_size + 16, self.thumb_size + 30)
        if role == ImageIdRole:
            return row.image_id
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
            current = row is not None and (self._rows[row].sha256, self._rows[row].page) == key
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
