"""The library browser: a lazy thumbnail grid with filters and review queues, paged from the store.

The store answers the filters and orders one page at a time (keyset pages,
workspace/browse.py); every read runs on the browser's worker lane, so the GUI thread
never waits on the store. The model asks for the next page when the view scrolls to
the end, and again for a page scrolled back to after it was dropped from memory.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QSize, Qt, QTimer
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QPushButton,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from nmid_desktop.core.store import Store, open_library
from nmid_desktop.qt.context import AppContext
from nmid_desktop.qt.imaging import class_color
from nmid_desktop.qt.models import ImageIdRole, LibraryModel
from nmid_desktop.qt.workers import JobHandle
from nmid_desktop.workspace.browse import (
    ORDERS,
    SOURCES,
    BrowserPage,
    BrowserQuery,
    BrowserRow,
    IdChunk,
    count_rows,
    fetch_id_chunk,
    fetch_ids,
    fetch_page,
)
from nmid_desktop.workspace.display import ThumbnailQueue, thumbnail_loader

log = logging.getLogger(__name__)

BROWSER_LANE = "browser"
ID_CHUNK = 20_000  # ids listed per store call after the first page


class _TileDelegate(QStyledItemDelegate):
    """Paints a list-mode item as an icon-mode tile: thumbnail on top, label centred below."""

    def initStyleOption(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> None:  # noqa: N802
        super().initStyleOption(option, index)
        option.decorationPosition = QStyleOptionViewItem.Position.Top
        option.decorationAlignment = Qt.AlignmentFlag.AlignCenter
        option.displayAlignment = Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop
        option.showDecorationSelected = False  # as in icon mode: the label is highlighted, the icon tinted


class LibraryBrowser(QWidget):
    """Filters, a count, and the thumbnail grid. Double-click opens an image for labelling."""

    def __init__(self, ctx: AppContext, parent: QWidget | None = None, *, page_size: int = 200) -> None:
        super().__init__(parent)
        self.setObjectName("libraryBrowser")
        self.ctx = ctx
        self.requests = ThumbnailQueue()
        self.model = LibraryModel(self.requests, parent=self, page_size=page_size)
        self.model.pages_requested.connect(self._on_model_pages_requested)
        self._loader: JobHandle | None = None
        self._query_handle: JobHandle | None = None
        self._query = BrowserQuery()
        self._cursor: tuple[int, int, float, float, int] | None = None
        self._generation = 0
        self._count: int | None = None
        self._keep: int | None = None
        self._pages_handle: JobHandle | None = None
        self._pages_in_flight: list[int] = []
        self._dirty = True

        self.class_combo = QComboBox(self)
        self.class_combo.setMinimumWidth(160)
        self.source_combo = QComboBox(self)
        self.source_combo.addItem("Any source", None)
        for source in SOURCES:
            self.source_combo.addItem(source, source)
        self.search_edit = QLineEdit(self)
        self.search_edit.setPlaceholderText("File name contains…")
        self.search_edit.setClearButtonEnabled(True)
        self.unlabelled_check = QCheckBox("Unlabelled", self)
        self.review_check = QCheckBox("Needs review", self)
        self.order_combo = QComboBox(self)
        for key, text in ORDERS.items():
            self.order_combo.addItem(text, key)
        self.refresh_button = QPushButton("Refresh", self)
        self.count_label = QLabel("", self)
        self.count_label.setObjectName("dimLabel")
        bar = QHBoxLayout()
        for widget in (self.class_combo, self.source_combo, self.search_edit, self.unlabelled_check, self.review_check, self.order_combo):
            bar.addWidget(widget)
        bar.addStretch(1)
        bar.addWidget(self.count_label)
        bar.addWidget(self.refresh_button)

        self.view = QListView(self)
        self.view.setObjectName("libraryGrid")
        self.view.setModel(self.model)
        # A wrapping list, not IconMode: IconMode keeps a geometry per row and asks the (Python)
        # model for every row it lays out, which at a million rows stalls the GUI thread while
        # the worker holds the GIL; a wrapping list with uniform sizes lays out from one size
        # (benchmarks/browser_million.py --n 1000000, side by side: longest GUI stall 65-80 ms against
        # 96-101 ms, RSS growth 40-50 MB against 57-74 MB).
        self.view.setViewMode(QListView.ViewMode.ListMode)
        self.view.setFlow(QListView.Flow.LeftToRight)
        self.view.setWrapping(True)
        self.view.setVerticalScrollMode(QListView.ScrollMode.ScrollPerPixel)
        self.view.setItemDelegate(_TileDelegate(self.view))
        self.view.setMovement(QListView.Movement.Static)
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setUniformItemSizes(True)
        self.view.setLayoutMode(QListView.LayoutMode.Batched)
        self.view.setBatchSize(2000)
        self.view.setIconSize(QSize(self.model.thumb_size, self.model.thumb_size))
        self.view.setGridSize(QSize(self.model.thumb_size + 18, self.model.thumb_size + 34))
        self.view.setSpacing(2)
        self.view.setWordWrap(False)
        self.view.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.view.setSelectionMode(QListView.SelectionMode.ExtendedSelection)
        self.view.setDragEnabled(False)
        self.view.setAcceptDrops(False)
        # Double-click or Enter. A double-click may emit both signals: the second is dropped.
        self.view.doubleClicked.connect(self._on_view_activated)
        self.view.activated.connect(self._on_view_activated)
        self._last_open: tuple[int, float] | None = None
        self.view.verticalScrollBar().valueChanged.connect(self._on_scrolled)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addLayout(bar)
        layout.addWidget(self.view, 1)

        self._requery_timer = QTimer(self)
        self._requery_timer.setSingleShot(True)
        self._requery_timer.setInterval(400)
        self._requery_timer.timeout.connect(self.refresh)
        for combo in (self.class_combo, self.source_combo, self.order_combo):
            combo.currentIndexChanged.connect(self._on_filter_changed)
        for check in (self.unlabelled_check, self.review_check):
            check.toggled.connect(self._on_filter_changed)
        self.search_edit.textChanged.connect(self._on_filter_changed)
        self.refresh_button.clicked.connect(self.refresh)
        ctx.labels_changed.connect(self._on_ctx_labels_changed)
        ctx.status_changed.connect(self._on_ctx_status_changed)
        ctx.library_changed.connect(self._on_ctx_library_changed)
        self._start_lane()
        self._set_classes([])

    # -- lanes and workers --------------------------------------------------------------------------
    def _start_lane(self) -> None:
        library = self.ctx.library

        def open_store() -> Store:
            return open_library(library)

        self.ctx.jobs.add_lane(BROWSER_LANE, open_store, lambda store: store.close())

    def _ensure_loader(self) -> None:
        if self._loader is not None and self._loader.running:
            return
        cache, requests = self.ctx.thumbnails, self.requests
        max_pixels = self.ctx.settings.max_pixels
        self._loader = self.ctx.jobs.start(
            "thumbnails", lambda token: thumbnail_loader(requests, cache, token, max_pixels=max_pixels)
        )
        self._loader.progress_changed.connect(self._on_loader_progress)

    def shutdown(self) -> None:
        """Stop the thumbnail worker (the window's job manager waits for it)."""
        self.requests.close()
        if self._loader is not None:
            self._loader.cancel()

    # -- querying ------------------------------------------------------------------------------------
    def current_query(self) -> BrowserQuery:
        """The query the filters describe."""
        return BrowserQuery(
            label=self.class_combo.currentData(),
            source=self.source_combo.currentData(),
            unlabelled=self.unlabelled_check.isChecked(),
            needs_review=self.review_check.isChecked(),
            order=self.order_combo.currentData() or "id",
            local_predictor=self.ctx.settings.local_predictor,
            search=self.search_edit.text(),
        )

    def refresh(self) -> JobHandle:
        """List the rows for the current filters again, from the first page (in the browser's worker).

        Returns:
            The job that reads the first page.
        """
        self._dirty = False
        current = self.view.currentIndex()
        self._keep = int(current.data(ImageIdRole)) if current.isValid() else None
        self._query = self.current_query()
        self._generation += 1
        self._cursor = None
        self._count = None
        self._ensure_loader()
        self.count_label.setText("Loading…")
        self.model.reset()
        handle = self._fetch_next()
        query, generation = self._query, self._generation
        counter = self.ctx.jobs.start("browser-count", lambda store, token: count_rows(store, query), lane=BROWSER_LANE)
        counter.finished.connect(lambda n, g=generation: self._on_count_finished(g, n))
        counter.failed.connect(self._on_query_failed)
        return handle

    def _fetch_next(self) -> JobHandle:
        query, generation = self._query, self._generation
        size = self.model.page_size
        self.model.start_fetching()
        handle = self.ctx.jobs.start(
            "browser-query", lambda store, token: fetch_page(store, query, None, size), lane=BROWSER_LANE
        )
        handle.finished.connect(lambda page, g=generation: self._on_page_finished(g, page))
        handle.failed.connect(self._on_query_failed)
        self._query_handle = handle
        return handle

    def _fetch_ids(self) -> None:
        query, cursor, generation = self._query, self._cursor, self._generation
        handle = self.ctx.jobs.start(
            "browser-ids", lambda store, token: fetch_id_chunk(store, query, cursor, ID_CHUNK), lane=BROWSER_LANE
        )
        handle.finished.connect(lambda chunk, g=generation: self._on_ids_finished(g, chunk))
        handle.failed.connect(self._on_query_failed)

    def _on_model_pages_requested(self, batch: list[tuple[int, list[int]]]) -> None:
        query, generation = self._query, self._generation
        ids = [image_id for _, page_ids in batch for image_id in page_ids]
        pages = [page for page, _ in batch]
        if self._pages_handle is not None and self._pages_handle.running:
            # Superseded below: its pages (scrolled past, or asked again in this batch) are free again.
            old = self._pages_handle
            old.cancelled.connect(lambda p=self._pages_in_flight: self.model.unask(p))
        handle = self.ctx.jobs.start(
            "browser-pages", lambda store, token: fetch_ids(store, query, ids), lane=BROWSER_LANE
        )
        handle.finished.connect(lambda rows, g=generation, b=batch: self._on_pages_finished(g, b, rows))
        self._pages_handle, self._pages_in_flight = handle, pages

    def _on_query_failed(self, message: str) -> None:
        self.count_label.setText(f"Error: {message}")

    def _on_page_finished(self, generation: int, page: BrowserPage) -> None:
        if generation != self._generation:
            return  # an older query's page
        self._cursor = page.cursor
        self.model.append_page(page.rows, at_end=page.cursor is None)
        if page.cursor is not None:
            self._fetch_ids()
        if self._keep is not None:
            row = self.model.row_of(self._keep)
            if row is not None:
                self._keep = None
                self.view.setCurrentIndex(self.model.index(row))
                self.view.scrollTo(self.model.index(row))
        self._show_count()

    def _on_ids_finished(self, generation: int, chunk: IdChunk) -> None:
        if generation != self._generation:
            return
        self._cursor = chunk.cursor
        self.model.append_ids(chunk.ids, at_end=chunk.cursor is None)
        if chunk.cursor is not None:
            self._fetch_ids()
        self._show_count()

    def _on_pages_finished(self, generation: int, batch: list[tuple[int, list[int]]], rows: list[BrowserRow]) -> None:
        if generation != self._generation:
            return
        for page, _ in batch:
            self.model.fill_page(page, rows)  # each page takes its own rows by id

    def _on_count_finished(self, generation: int, count: int) -> None:
        if generation == self._generation:
            self._count = count
            self.model.set_total(count)
            self._show_count()

    def _show_count(self) -> None:
        what = "images" if self._query.order == "id" else "images to review"
        if self._count is not None:
            self.count_label.setText(f"{self._count:,} {what}")
        elif self.model.complete:
            self.count_label.setText(f"{self.model.rowCount():,} {what}")

    def _on_loader_progress(self, progress) -> None:  # noqa: ANN001
        if progress.data:
            self.model.add_thumbnails(progress.data)

    def _on_scrolled(self, value: int) -> None:
        # Requests for rows scrolled past are dropped; the rows now painted ask again.
        self.model.forget_requests()
        self.view.viewport().update()

    def _on_filter_changed(self, *args: object) -> None:
        self._requery_timer.start()

    def _on_ctx_labels_changed(self) -> None:
        self._dirty = True
        if self.isVisible():
            self._requery_timer.start()

    def _on_ctx_status_changed(self, status) -> None:  # noqa: ANN001
        self._set_classes(status.class_names)
        self.model.colors = {name: class_color(name, status.class_names, color) for name, color in self.ctx.class_colors.items()}

    def _on_ctx_library_changed(self, library: Path) -> None:
        self._generation += 1
        self.model.reset()
        self._start_lane()
        self._dirty = True
        if self.isVisible():
            self.refresh()

    def _set_classes(self, names: list[str]) -> None:
        current = self.class_combo.currentData()
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_combo.addItem("All classes", None)
        for name in names:
            self.class_combo.addItem(name, name)
        index = self.class_combo.findData(current)
        self.class_combo.setCurrentIndex(max(0, index))
        self.class_combo.blockSignals(False)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802
        super().showEvent(event)
        if self._dirty:
            self.refresh()

    def _on_view_activated(self, index) -> None:  # noqa: ANN001
        image_id = index.data(ImageIdRole)
        now = time.monotonic()
        if image_id is not None and self._last_open is not None and self._last_open[0] == image_id:
            if now - self._last_open[1] < 0.5:
                return
        if image_id is not None:
            self._last_open = (int(image_id), now)
            # The list as shown is the queue: Enter or a digit on the Classify page decides
            # and moves to the next image in this order (a review queue is worked this way).
            self.ctx.open_queue_requested.emit(self.model.ids(), int(image_id))

    def selected_ids(self) -> list[int]:
        """Ids of the selected images, in view order."""
        return [int(i.data(ImageIdRole)) for i in sorted(self.view.selectedIndexes(), key=lambda i: i.row())]
