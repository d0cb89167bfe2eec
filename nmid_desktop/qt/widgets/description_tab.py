"""The structured description of the current image: the paper's ten groups as a table."""

from __future__ import annotations

from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from nmid_desktop.qt.context import AppContext
from nmid_desktop.qt.workers import JobHandle
from nmid_desktop.workspace.engine import QueryResult
from nmid_desktop.workspace.model_tasks import DescriptionView, describe_job, stored_description


class DescriptionTab(QWidget):
    """Shows the newest stored description; "Describe" asks the vision model for one."""

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("descriptionTab")
        self.ctx = ctx
        self.image_id: int | None = None
        self.view: DescriptionView | None = None
        self.describe_button = QPushButton("Describe", self)
        self.describe_button.setObjectName("primary")
        self.describe_button.setToolTip("Ask the vision model to answer the question set for this image")
        self.describe_button.clicked.connect(self.describe)
        self.info = QLabel("", self)
        self.info.setObjectName("dimLabel")
        self.info.setWordWrap(True)
        head = QHBoxLayout()
        head.addWidget(self.describe_button)
        head.addWidget(self.info, 1)
        self.table = QTableWidget(0, 2, self)
        self.table.setHorizontalHeaderLabels(["Question", "Answer"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(True)
        self.table.setAlternatingRowColors(True)
        self.table.setAlternatingRowColors(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setColumnWidth(0, 260)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addLayout(head)
        layout.addWidget(self.table, 1)
        self._update_enabled()
        ctx.endpoint_changed.connect(lambda ok: self._update_enabled())
        self.info.setText("Open an image to see its structured description.")

    def on_query(self, result: QueryResult) -> None:
        """A new current image: show its stored description, if any."""
        if result.image_id == self.image_id and self.view is not None:
            return
        self.image_id = result.image_id
        self.view = None
        self.table.setRowCount(0)
        self._update_enabled()
        library, image_id = self.ctx.library, result.image_id
        handle = self.ctx.jobs.start("description-load", lambda token: stored_description(library, image_id))
        handle.finished.connect(lambda view, i=image_id: self._on_loaded(i, view))

    def _on_loaded(self, image_id: int, view: DescriptionView | None) -> None:
        if image_id != self.image_id:
            return
        if view is None:
            self.info.setText("No description yet." + ("" if self._endpoint() else " Configure a model endpoint in Settings to make one."))
        self.show_view(view)

    def describe(self) -> JobHandle | None:
        """Ask the model for a description of the current image."""
        if self.image_id is None:
            return None
        library, settings, image_id = self.ctx.library, self.ctx.settings, self.image_id
        self.info.setText(f"Asking {settings.lmm.vision_model}…")
        self.describe_button.setEnabled(False)
        handle = self.ctx.jobs.start("describe", lambda token: describe_job(library, settings, image_id, token))
        handle.finished.connect(lambda view: self._on_described(image_id, view))
        handle.failed.connect(self._on_failed)
        handle.ended.connect(self._update_enabled)
        return handle

    def _on_described(self, image_id: int, view: DescriptionView) -> None:
        self.ctx.message.emit("Description stored")
        self.ctx.status_refresh_requested.emit()  # spending changed
        if image_id == self.image_id:
            self.show_view(view)

    def _on_failed(self, message: str) -> None:
        self.info.setText(f"<span style='color:#f28b82'>{message}</span>")

    def show_view(self, view: DescriptionView | None) -> None:
        """Fill the table: a header row per group (the paper's ten), then its questions and answers."""
        from nmid_desktop.lmm.parsing import REASONING

        self.view = view
        self.table.clearSpans()
        self.table.setRowCount(0)
        if view is None:
            self._update_enabled()
            return
        # The step-by-step reasoning of each group is kept in the library but not tabled.
        rows = [r for r in view.rows if r.question != REASONING]
        groups: list[str] = []
        for row in rows:
            if not groups or groups[-1] != row.group:
                groups.append(row.group)
        self.table.setRowCount(len(rows) + len(groups))
        header_font = self.table.font()
        header_font.setBold(True)
        line = 0
        previous = None
        for row in rows:
            if row.group != previous:
                previous = row.group
                title = QTableWidgetItem(f"{groups.index(row.group) + 1}. {row.group}")
                title.setFont(header_font)
                title.setForeground(QColor("#8ab4f8"))
                title.setBackground(QColor("#292a2d"))
                self.table.setItem(line, 0, title)
                self.table.setSpan(line, 0, 1, 2)
                line += 1
            self.table.setItem(line, 0, QTableWidgetItem(row.question))
            answer = QTableWidgetItem(row.answer)
            answer.setToolTip(row.answer)
            self.table.setItem(line, 1, answer)
            line += 1
        self.table.resizeRowsToContents()
        cost = " · cached" if view.cached else (f" · ${view.cost_usd:.4f}" if view.cost_usd else "")
        self.info.setText(f"{len(groups)} groups, {len(rows)} answers · {view.model} · {view.prompt_version}{cost}")
        self._update_enabled()

    def _endpoint(self) -> bool:
        return bool(getattr(self.ctx, "endpoint_ok", False))

    def _update_enabled(self) -> None:
        running = self.ctx.jobs.is_running("describe")
        self.describe_button.setEnabled(self.image_id is not None and self._endpoint() and not running)
