"""The library browser: a lazy thumbnail grid with filters and review queues."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListView,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from nmid_desktop.core.store import ImageFilter, ImageRecord, Store, open_library
from nmid_desktop.qt.context import AppContext
from nmid_desktop.qt.imaging import class_color
from nmid_desktop.qt.models import ImageIdRole, LibraryModel, BrowserRow
from nmid_desktop.workspace.display import ThumbnailQueue, thumbnail_loader
from nmid_desktop.qt.workers import JobHandle, freeze_heap

log = logging.getLogger(__name__)

BROWSER_LANE = "browser"
ORDERS = {
    "id": "Library order",
    "uncertain": "Review queue: most uncertain first",
    "disagree": "Review queue: local and model disagree first",
}
SOURCES = ("import", "expert", "local", "lmm", "synthetic")
FETCH_BATCH = 2000


@dataclass(frozen=True)
class BrowserQuery:
    """What the browser asks for (plain data for the worker)."""

    label: str | None = None
    source: str | None = None
    unlabelled: bool = False
    needs_review: bool = False
    order: str = "id"
    local_predictor: str = "knn"


def _row(record: ImageRecord, note: str = "") -> BrowserRow:
    return BrowserRow(
        image_id=record.id,
        name=record.original_name,
        label=record.label,
        source=record.label_source,
        review=record.review,
        synthetic=record.synthetic,
        sha256=record.sha256,
        page=record.page,
        path=record.path,
        crop_box=record.crop_box,
        note=note,
    )


def fetch_rows(store: Store, query: BrowserQuery, token):  # noqa: ANN001, ANN201 - a job
    """The browser's rows for a query, in its order (a job: yields progress per batch).

    Review queues hold only images nobody has accepted or rejected. Images with a local prediction come first, ordered by its margin
    (smallest first: the most uncertain); ``disagree`` puts images whose latest model
    prediction differs from the local one before all others. Images without any
    prediction follow in library order.
    """
    from nmid_desktop.core.jobs import Progress

    flt = ImageFilter(
        label=query.label,
        label_source=query.source,
        unlabelled=True if query.unlabelled else None,
        review="pending" if query.needs_review else None,
    )
    total = store.count_images(flt)
    records: list[ImageRecord] = []
    offset = 0
    while True:
        batch = store.images(flt, limit=FETCH_BATCH, offset=offset)
        if not batch:
            break
        records.extend(batch)
        offset += len(batch)
        yield Progress(len(records), total, "reading the library")
    if query.order == "id":
        return [_row(r) for r in records]
    # A review queue holds what an expert has not decided yet: unlabelled or pending images.
    records = [r for r in records if r.review == "pending" or r.label is None]
    local = store.latest_predictions(query.local_predictor)
    other = "logreg" if query.local_predictor == "knn" else "knn"
    fallback = store.latest_predictions(other)
    model = store.latest_predictions("lmm") if query.order == "disagree" else {}
    keyed: list[tuple[tuple, BrowserRow]] = []
    for position, record in enumerate(records):
        prediction = local.get(record.id) or fallback.get(record.id)
        if prediction is None or not prediction.ranking:
            keyed.append(((2, 0.0, position), _row(record)))
            continue
        probs = [p for _, p in prediction.ranking]
        margin = probs[0] - (probs[1] if len(probs) > 1 else 0.0)
        note = f"local: {prediction.label} (margin {margin:.2f})"
        group = 1
        answer = model.get(record.id)
        if answer is not None and answer.valid and answer.label:
            if answer.label != prediction.label:
                group = 0
                note += f"; model: {answer.label}"
            else:
                note += "; model agrees"
        keyed.append(((group, margin, position), _row(record, note)))
    keyed.sort(key=lambda kr: kr[0])
    return [row for _, row in keyed]


class LibraryBrowser(QWidget):
    """Filters, a count, and the thumbnail grid. Double-click opens an image for labelling."""

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("libraryBrowser")
        self.ctx = ctx
        self.requests = ThumbnailQueue()
        self.model = LibraryModel(self.requests, parent=self)
        self._loader: JobHandle | None = None
        self._query_handle: JobHandle | None = None
        self._dirty = True

        self.class_combo = QComboBox(self)
        self.class_combo.setMinimumWidth(160)
        self.source_combo = QComboBox(self)
        self.source_combo.addItem("Any source", None)
        for source in SOURCES:
            self.source_combo.addItem(source, source)
        self.unlabelled_check = QCheckBox("Unlabelled", self)
        self.review_check = QCheckBox("Needs review", self)
        self.order_combo = QComboBox(self)
        for key, text in ORDERS.items():
            self.order_combo.addItem(text, key)
        self.refresh_button = QPushButton("Refresh", self)
        self.count_label = QLabel("", self)
        self.count_label.setObjectName("dimLabel")
        bar = QHBoxLayout()
        for widget in (self.class_combo, self.source_combo, self.unlabelled_check, self.review_check, self.order_combo):
            bar.addWidget(widget)
        bar.addStretch(1)
        bar.addWidget(self.count_label)
        bar.addWidget(self.refresh_button)

        self.view = QListView(self)
        self.view.setObjectName("libraryGrid")
        self.view.setModel(self.model)
        self.view.setViewMode(QListView.ViewMode.IconMode)
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
        self.view.doubleClicked.connect(self._on_view_double_clicked)
        self.view.activated.connect(self._on_view_double_clicked)
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
        )

    def refresh(self) -> JobHandle:
        """Fetch the rows for the current filters (in the browser's worker)."""
        self._dirty = False
        query = self.current_query()
        self._ensure_loader()
        self.count_label.setText("Loading…")
        handle = self.ctx.jobs.start("browser-query", lambda store, token: fetch_rows(store, query, token), lane=BROWSER_LANE)
        handle.finished.connect(self._on_query_finished)
        handle.failed.connect(lambda msg: self.count_label.setText(f"Error: {msg}"))
        self._query_handle = handle
        return handle

    def _on_query_finished(self, rows: list[BrowserRow]) -> None:
        current = self.view.currentIndex()
        keep = self.model.row_data(current.row()).image_id if current.isValid() else None
        self.model.set_rows(rows)
        if len(rows) > 5000:
            freeze_heap()  # thousands of long-lived rows: keep full GC passes short
        query = self.current_query()
        what = "images" if query.order == "id" else "images to review"
        self.count_label.setText(f"{len(rows):,} {what}")
        if keep is not None:
            row = self.model.row_of(keep)
            if row is not None:
                self.view.setCurrentIndex(self.model.index(row))
                self.view.scrollTo(self.model.index(row))

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
        self.model.set_rows([])
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

    def _on_view_double_clicked(self, index) -> None:  # noqa: ANN001
        image_id = index.data(ImageIdRole)
        if image_id is not None:
            self.ctx.open_image_requested.emit(int(image_id))

    def selected_ids(self) -> list[int]:
        """Ids of the selected images, in view order."""
        return [int(i.data(ImageIdRole)) for i in sorted(self.view.selectedIndexes(), key=lambda i: i.row())]
