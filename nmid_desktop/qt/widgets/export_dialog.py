"""Export the curated dataset: ImageFolder tree, CSV and JSONL manifests, a stratified seeded split."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from nmid_desktop.core.jobs import Progress
from nmid_desktop.qt.context import AppContext
from nmid_desktop.qt.workers import JobHandle
from nmid_desktop.workspace.export import export_job


class ExportDialog(QDialog):
    """Choose a folder and a split; the export runs in a worker with progress and cancel."""

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("exportDialog")
        self.setWindowTitle("Export dataset")
        self.setMinimumWidth(560)
        self.ctx = ctx
        self.handle: JobHandle | None = None
        self.report = None
        self.folder_edit = QLineEdit(self)
        self.folder_edit.setPlaceholderText("An empty or new folder")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._on_browse_clicked)
        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        self.train = self._fraction(0.70)
        self.val = self._fraction(0.15)
        self.test = self._fraction(0.15)
        split_row = QHBoxLayout()
        for name, spin in (("train", self.train), ("val", self.val), ("test", self.test)):
            split_row.addWidget(QLabel(name, self))
            split_row.addWidget(spin)
        self.seed = QSpinBox(self)
        self.seed.setRange(0, 2**31 - 1)
        self.pending = QCheckBox("Also export labels nobody has reviewed yet", self)
        self.copy_mode = QComboBox(self)
        for mode, text in (("copy", "Copy files"), ("hardlink", "Hard links (no extra space)"), ("symlink", "Symbolic links")):
            self.copy_mode.addItem(text, mode)
        form = QFormLayout()
        form.addRow("Folder", row)
        form.addRow("Split", split_row)
        form.addRow("Seed", self.seed)
        form.addRow("", self.pending)
        form.addRow("Files", self.copy_mode)
        note = QLabel("Images already in a test split stay there: a test set is fixed once defined. "
                      "Synthetic images never enter a test split; rejected images are left out.", self)
        note.setObjectName("dimLabel")
        note.setWordWrap(True)
        self.progress = QProgressBar(self)
        self.progress.hide()
        self.output = QPlainTextEdit(self)
        self.output.setReadOnly(True)
        self.output.hide()
        self.export_button = QPushButton("Export", self)
        self.export_button.setObjectName("primary")
        self.export_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Close", self)
        self.cancel_button.clicked.connect(self._on_cancel_clicked)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.export_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(self.progress)
        layout.addWidget(self.output)
        layout.addLayout(buttons)

    def _fraction(self, value: float) -> QDoubleSpinBox:
        spin = QDoubleSpinBox(self)
        spin.setRange(0.0, 1.0)
        spin.setSingleStep(0.05)
        spin.setDecimals(2)
        spin.setValue(value)
        return spin

    def start(self) -> JobHandle | None:
        """Start the export (in a worker)."""
        text = self.folder_edit.text().strip()
        if not text:
            self._show("Choose a folder first.")
            return None
        split = (self.train.value(), self.val.value(), self.test.value())
        if abs(sum(split) - 1.0) > 1e-6:
            self._show(f"The split must add up to 1 (it adds up to {sum(split):.2f}).")
            return None
        library, out_dir = self.ctx.library, Path(text)
        seed, pending, mode = self.seed.value(), self.pending.isChecked(), self.copy_mode.currentData()
        self.export_button.setEnabled(False)
        self.cancel_button.setText("Cancel")
        self.progress.show()
        self.progress.setRange(0, 0)
        self.handle = self.ctx.jobs.start(
            "export", lambda token: export_job(library, out_dir, split, seed, pending, mode, token)
        )
        self.handle.progress_changed.connect(self._on_progress)
        self.handle.finished.connect(self._on_finished)
        self.handle.failed.connect(lambda msg: self._show(f"Export failed: {msg}"))
        self.handle.cancelled.connect(lambda: self._show("Export cancelled; the folder may hold part of the export."))
        self.handle.ended.connect(self._on_ended)
        return self.handle

    def _on_progress(self, progress: Progress) -> None:
        if progress.total:
            self.progress.setRange(0, progress.total)
            self.progress.setValue(progress.done)

    def _on_finished(self, report) -> None:  # noqa: ANN001
        self.report = report
        self._show(report.summary())
        self.ctx.message.emit(f"Exported {report.n_images} images")

    def _on_ended(self) -> None:
        self.progress.hide()
        self.export_button.setEnabled(True)
        self.cancel_button.setText("Close")

    def _show(self, text: str) -> None:
        self.output.show()
        self.output.setPlainText(text)

    def _on_cancel_clicked(self) -> None:
        if self.handle is not None and self.handle.running:
            self.handle.cancel()
        else:
            self.reject()

    def _on_browse_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to")
        if folder:
            self.folder_edit.setText(folder)
