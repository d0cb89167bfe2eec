"""The Batch tab: classify a whole folder with progress, a cost estimate first when the model is on, and cancel."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from nmid_desktop.core.jobs import Progress
from nmid_desktop.qt.context import AppContext
from nmid_desktop.qt.models import BatchTableModel, ImageIdRole
from nmid_desktop.qt.workers import JobHandle
from nmid_desktop.workspace.batch import BatchRow, BatchSummary, batch_job


class BatchPanel(QWidget):
    """Folder, options, Start/Cancel, progress, and a table that fills as results arrive."""

    def __init__(self, ctx: AppContext, parent: QWidget | None = None, *, encoder: object = None) -> None:
        super().__init__(parent)
        self.setObjectName("batchPanel")
        self.ctx = ctx
        self.encoder = encoder
        self.handle: JobHandle | None = None
        self.summary: BatchSummary | None = None
        self.pending_estimate: BatchSummary | None = None
        self.confirm_estimates = True  # ask before spending; tests and scripts may answer themselves

        self.folder_edit = QLineEdit(self)
        self.folder_edit.setPlaceholderText("Folder of micrographs to classify (searched recursively)")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._on_browse_clicked)
        self.model_check = QCheckBox("Ask the model too (cost estimated first)", self)
        self.label_check = QCheckBox("Give unlabelled images the prediction, pending review", self)
        self.label_check.setChecked(True)
        self.start_button = QPushButton("Classify folder", self)
        self.start_button.setObjectName("primary")
        # clicked(bool) must not reach start(folder): the checked flag once replaced the folder with False.
        self.start_button.clicked.connect(self._on_start_button_clicked)
        self.folder_edit.returnPressed.connect(self._on_start_button_clicked)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setObjectName("danger")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        top = QHBoxLayout()
        top.addWidget(self.folder_edit, 1)
        top.addWidget(browse)
        opts = QHBoxLayout()
        opts.addWidget(self.model_check)
        opts.addWidget(self.label_check)
        opts.addStretch(1)
        opts.addWidget(self.cancel_button)
        opts.addWidget(self.start_button)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.message = QLabel("Classify a folder: every image is imported, embedded, compared with the labelled "
                              "library and ranked; double-click a row to review it.", self)
        self.message.setObjectName("dimLabel")
        self.message.setWordWrap(True)
        self.model = BatchTableModel(self)
        self.table = QTableView(self)
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.doubleClicked.connect(self._on_table_double_clicked)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 10)
        layout.addLayout(top)
        layout.addLayout(opts)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        layout.addWidget(self.table, 1)
        ctx.endpoint_changed.connect(self._on_ctx_endpoint_changed)
        self._on_ctx_endpoint_changed(ctx.endpoint_ok)

    def _on_ctx_endpoint_changed(self, ok: bool) -> None:
        self.model_check.setEnabled(ok)
        if not ok:
            self.model_check.setChecked(False)

    # -- running ------------------------------------------------------------------------------------
    def _on_start_button_clicked(self) -> None:
        if self.handle is not None and self.handle.running:
            return  # one batch at a time: the running one has Cancel
        self.start()

    def start(self, folder: Path | None = None) -> JobHandle | None:
        """Start the batch; with the model on, an estimate comes first and must be confirmed."""
        if folder is not None:
            self.folder_edit.setText(str(folder))
        text = self.folder_edit.text().strip()
        if not text:
            self.message.setText("Choose a folder first.")
            return None
        use_model = self.model_check.isChecked() and self.ctx.endpoint_ok
        return self._run(Path(text), use_model=use_model, estimate_only=use_model)

    def _run(self, folder: Path, *, use_model: bool, estimate_only: bool) -> JobHandle:
        library, settings, encoder = self.ctx.library, self.ctx.settings, self.encoder
        write = self.label_check.isChecked()
        self.model.clear()
        self.summary = None
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.message.setText("Estimating the cost…" if estimate_only else "Classifying…")
        handle = self.handle = self.ctx.jobs.start(
            "batch",
            lambda token: batch_job(library, settings, folder, token, use_model=use_model, write_labels=write,
                                    estimate_only=estimate_only, encoder=encoder),
        )
        handle.progress_changed.connect(self._on_progress)
        handle.finished.connect(lambda summary: self._on_finished(folder, summary))
        handle.failed.connect(lambda msg: self.message.setText(f"<span style='color:#f28b82'>{msg}</span>"))
        handle.cancelled.connect(self._on_cancelled)
        # The estimate's job ends after its finished slot has started the model batch: only the
        # current batch's end may re-enable Start and disable Cancel.
        handle.ended.connect(lambda: self._on_ended(handle))
        return handle

    def cancel(self) -> None:
        """Stop the batch at its next image or call; finished results are kept."""
        if self.handle is not None:
            self.handle.cancel()

    def _on_progress(self, progress: Progress) -> None:
        if progress.total:
            self.progress.setRange(0, progress.total)
            self.progress.setValue(progress.done)
        if isinstance(progress.data, BatchRow):
            self.model.upsert(progress.data)
        self.message.setText(progress.message)

    def _on_finished(self, folder: Path, summary: BatchSummary) -> None:
        self.summary = summary
        self.model.set_rows(summary.rows)
        if summary.estimate_only:
            self.pending_estimate = summary
            text = f"{len(summary.rows)} images. Model cost estimate: {summary.estimate.summary() if summary.estimate else 'unknown'}"
            self.message.setText(text)
            if self.confirm_estimates and self._confirm(text):
                self.continue_after_estimate(folder)
            return
        parts = [f"{len(summary.rows)} images classified ({summary.import_summary})"]
        if summary.estimate is not None:
            parts.append(f"{summary.disagreements} disagreements between local and model")
        if summary.stopped == "budget":
            parts.append("stopped at the budget cap")
        if summary.model_failures:
            parts.append(f"{len(summary.model_failures)} model calls failed")
        self.message.setText("; ".join(parts) + ".")
        self.ctx.labels_changed.emit()
        self.ctx.status_refresh_requested.emit()
        self.ctx.message.emit("Batch finished")

    def continue_after_estimate(self, folder: Path | None = None) -> JobHandle:
        """Run the batch with the model after its estimate was accepted."""
        folder = folder or Path(self.folder_edit.text().strip())
        self.pending_estimate = None
        return self._run(folder, use_model=True, estimate_only=False)

    def _confirm(self, text: str) -> bool:
        spent = self.ctx.status.api_cost_usd if self.ctx.status else 0.0
        answer = QMessageBox.question(
            self, "Send the batch to the model?",
            f"{text}\n\nSpent so far: ${spent:.2f} of the ${self.ctx.settings.lmm.budget_usd:.2f} budget.",
        )
        return answer == QMessageBox.StandardButton.Yes

    def _on_cancelled(self) -> None:
        self.message.setText(f"Cancelled after {self.model.rowCount()} images; their results are kept.")
        self.ctx.labels_changed.emit()
        self.ctx.status_refresh_requested.emit()

    def _on_ended(self, handle: JobHandle) -> None:
        if handle is not self.handle:
            return
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)

    def _on_table_double_clicked(self, index) -> None:  # noqa: ANN001
        image_id = self.model.index(index.row(), 0).data(ImageIdRole)
        if image_id is not None:
            self.ctx.open_image_requested.emit(int(image_id))

    def _on_browse_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder to classify")
        if folder:
            self.folder_edit.setText(folder)
