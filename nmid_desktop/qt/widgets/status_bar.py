"""The status bar: library and size, encoder, device, index state, API spending, and running jobs."""

from __future__ import annotations

import re

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QDialog,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QSizePolicy,
    QStatusBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from nmid_desktop.core.jobs import Progress
from nmid_desktop.qt.workers import JobHandle, JobManager
from nmid_desktop.workspace.engine import LibraryStatus

# Background chatter that should not take over the progress indicator.
QUIET_KINDS = {"thumbnails", "status", "browser-query", "contrast", "query", "watch"}  # watch: never ends

JOB_TITLES = {
    "open": "Importing",
    "prepare": "Preparing the classifier",
    "demo": "Building the demo library",
    "batch": "Batch",
    "training": "Training",
    "rebuild": "Rebuilding the index",
    "export": "Exporting",
    "describe": "Describing",
    "synthesize": "Generating images",
    "lmm": "Asking the model",
    "estimate": "Estimating cost",
    "models": "Listing models",
}


def money(usd: float) -> str:
    """Dollars with cents, or with four decimals below a dollar (one call often costs a fraction of a cent)."""
    return f"${usd:,.2f}" if usd >= 1 or usd == 0 else f"${usd:.4f}"


class StatusBar(QStatusBar):
    """Permanent facts on the right, the newest visible job's progress and cancel on the left."""

    def __init__(self, jobs: JobManager, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("statusBar")
        self.jobs = jobs
        self.job_label = QLabel("", self)
        self.progress = QProgressBar(self)
        self.progress.setFixedWidth(180)
        self.progress.setTextVisible(False)
        self.cancel_button = QToolButton(self)
        self.cancel_button.setText("✕")
        self.cancel_button.setToolTip("Cancel this job")
        self.cancel_button.setAutoRaise(True)
        self.cancel_button.clicked.connect(self._on_cancel_clicked)
        # Messages get a label of their own: QStatusBar's temporary message would be drawn
        # over the job indicator.
        self.message_label = QLabel("", self)
        self.warnings: list[str] = []
        self.log_path = ""
        self._messages_dialog: QDialog | None = None
        self.warnings_button = QToolButton(self)
        self.warnings_button.setObjectName("warningsButton")
        self.warnings_button.setAutoRaise(True)
        self.warnings_button.clicked.connect(self._on_warnings_clicked)
        self.warnings_button.hide()
        self._message_timer = QTimer(self)
        self._message_timer.setSingleShot(True)
        self._message_timer.timeout.connect(lambda: self.message_label.setText(""))
        for label in (self.job_label, self.message_label):
            # Long texts are elided: they must never widen the window.
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            label.setMinimumWidth(80)
        self.job_label.setMaximumWidth(440)
        self.addWidget(self.job_label, 1)
        self.addWidget(self.progress)
        self.addWidget(self.cancel_button)
        self.addWidget(self.message_label, 1)
        self.addWidget(self.warnings_button)
        self.library = QLabel("", self)
        self.encoder = QLabel("", self)
        self.device = QLabel("", self)
        self.index = QLabel("", self)
        self.spend = QLabel("", self)
        for label, tip in (
            (self.library, "Library folder, images and labelled images"),
            (self.encoder, "Encoder that embeds images for retrieval"),
            (self.device, "Where the encoder runs"),
            (self.index, "Nearest-neighbour index of the labelled images"),
            (self.spend, "API spending recorded in this library, and the budget cap"),
        ):
            label.setToolTip(tip)
            self.addPermanentWidget(label)
        # A shared library's server state: shown only while the server is away.
        self.server = QLabel("", self)
        self.server.setObjectName("serverState")
        self.server.hide()
        self.addPermanentWidget(self.server)
        self.server_away = False
        self._visible: list[JobHandle] = []
        self._set_idle()
        jobs.job_started.connect(self._on_jobs_job_started)
        jobs.job_ended.connect(self._on_jobs_job_ended)

    def set_status(self, status: LibraryStatus, budget_usd: float | None = None) -> None:
        """Show fresh library facts."""
        shared = status.location.startswith("postgresql")
        name = status.location if shared else (status.root.name or str(status.root))
        self.library.setText(f"{name} · {status.n_images:,} images · {status.n_labelled:,} labelled")
        where = f"{status.location}\nimages in {status.root}" if shared else str(status.root)
        self.library.setToolTip(f"{where}\n{len(status.classes)} classes, {status.n_pending} awaiting review")
        # The key is NAME@SHA[+VIEWS]; show the name and the view averaging, not the hash.
        name = re.sub(r"@[^+]*", "", status.encoder) if status.encoder else "–"
        self.encoder.setText(f"Encoder: {name}")
        self.encoder.setToolTip(status.encoder or "not loaded yet")
        device = status.device.upper() if status.device else "–"
        engine = {"onnxruntime": "ONNX Runtime", "torch": "PyTorch"}.get(status.engine, status.engine)
        self.device.setText(f"Device: {device} · {engine}" if engine else f"Device: {device}")
        self.device.setToolTip(status.runtime or "the encoder is not loaded yet")
        self.index.setText(f"Index: {status.index_state or '–'}")
        cap = f" of ${budget_usd:.2f}" if budget_usd is not None else ""
        self.spend.setText(f"API {money(status.api_cost_usd)}{cap}")

    def set_server_away(self, away: bool, detail: str = "") -> None:
        """Say that the shared library's server is away (browsing goes on) or back again."""
        if away == self.server_away:
            return
        self.server_away = away
        if away:
            self.server.setText("⚠ Server away")
            self.server.setToolTip(f"{detail}\nRetrying; what is loaded stays visible, label changes are refused.")
            self.server.show()
            self.show_message("The library's server is away: browsing what is loaded; labels cannot be saved "
                              "until it is back.", 0)
        else:
            self.server.hide()
            self.server.setText("")
            self.show_message("The library's server is back: changes made meanwhile are shown.", 10000)

    # -- jobs -------------------------------------------------------------------------------------
    def _on_jobs_job_started(self, handle: JobHandle) -> None:
        if handle.kind in QUIET_KINDS or handle.kind.startswith("label"):
            return
        self._visible.append(handle)
        handle.progress_changed.connect(lambda p, h=handle: self._on_handle_progress(h, p))
        self._show(handle, None)

    def _on_jobs_job_ended(self, handle: JobHandle) -> None:
        if handle in self._visible:
            self._visible.remove(handle)
        if self._visible:
            top = self._visible[-1]
            self._show(top, top.last_progress)
        else:
            self._set_idle()
            if handle.outcome == "failed" and handle.error:
                self.show_message(f"{JOB_TITLES.get(handle.kind, handle.kind)} failed: {handle.error}", 15000)
            elif handle.outcome == "cancelled" and not handle.superseded:
                self.show_message(f"{JOB_TITLES.get(handle.kind, handle.kind)} cancelled", 6000)

    def _on_handle_progress(self, handle: JobHandle, progress: Progress) -> None:
        if self._visible and self._visible[-1] is handle:
            self._show(handle, progress)

    def _show(self, handle: JobHandle, progress: Progress | None) -> None:
        title = JOB_TITLES.get(handle.kind, handle.kind.capitalize())
        message = progress.message if progress is not None and progress.message else ""
        count = ""
        if progress is not None and progress.total:
            count = f" {progress.done:,}/{progress.total:,}"
        text = f"{title}{count}" + (f": {message}" if message else "…")
        self.job_label.setText(self.fontMetrics().elidedText(text, Qt.TextElideMode.ElideMiddle, 420))
        self.job_label.setToolTip(text)
        if progress is not None and progress.total > 0:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * (progress.fraction or 0.0)))
        else:
            self.progress.setRange(0, 0)  # busy indicator
        self.job_label.show()
        self.progress.show()
        self.cancel_button.show()

    def _set_idle(self) -> None:
        self.job_label.setText("")
        self.job_label.hide()
        self.progress.hide()
        self.cancel_button.hide()

    def add_warning(self, text: str) -> None:
        """Keep a warning or error for the Messages list (the ⚠ button) and show it now."""
        self.warnings.append(text)
        self.warnings_button.setText(f"⚠ {len(self.warnings)}")
        self.warnings_button.setToolTip("Warnings and errors of this session (click to read them)")
        self.warnings_button.show()
        self.show_message(f"⚠ {text}", 15000)
        if self._messages_dialog is not None:
            self._messages_dialog.findChild(QPlainTextEdit).setPlainText(self._messages_text())

    def _messages_text(self) -> str:
        where = f"\n\nDetails (tracebacks) are in the log file:\n{self.log_path}" if self.log_path else ""
        return "\n\n".join(self.warnings) + where

    def _on_warnings_clicked(self) -> QDialog:
        if self._messages_dialog is None:
            dialog = QDialog(self.window())
            dialog.setObjectName("messagesDialog")
            dialog.setWindowTitle("Messages")
            dialog.resize(640, 360)
            text = QPlainTextEdit(dialog)
            text.setReadOnly(True)
            QVBoxLayout(dialog).addWidget(text)
            self._messages_dialog = dialog
        self._messages_dialog.findChild(QPlainTextEdit).setPlainText(self._messages_text())
        self._messages_dialog.show()
        return self._messages_dialog

    def show_message(self, text: str, timeout_ms: int = 8000) -> None:
        """A line beside the job indicator, cleared after ``timeout_ms`` (0: kept)."""
        self.message_label.setText(self.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, 600))
        self.message_label.setToolTip(text)
        if timeout_ms > 0:
            self._message_timer.start(timeout_ms)
        else:
            self._message_timer.stop()

    def _on_cancel_clicked(self) -> None:
        if self._visible:
            self._visible[-1].cancel()

    @property
    def visible_jobs(self) -> list[str]:
        """Kinds of the jobs shown, oldest first."""
        return [h.kind for h in self._visible]
