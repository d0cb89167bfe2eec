"""The Training tab: SimCLR training of an encoder on the library, with a live loss curve, ETA, device and cancel."""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from nmid_desktop.core.jobs import Progress
from nmid_desktop.qt.context import AppContext
from nmid_desktop.qt.widgets.loss_curve import LossCurve
from nmid_desktop.qt.workers import JobHandle
from nmid_desktop.workspace.training import PRESETS, TrainingRequest, training_job, training_unavailable


def format_seconds(seconds: float | None) -> str:
    """``1 h 02 min``, ``3 min 20 s`` or ``12 s``."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


class TrainingPanel(QWidget):
    """Start, watch and cancel SimCLR training."""

    trained = Signal(object)  # TrainResult, after a run finished (the library's encoder is unchanged)
    encoder_chosen = Signal(str)  # the user adopted the trained encoder after a better evaluation

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("trainingPanel")
        self.ctx = ctx
        self.handle: JobHandle | None = None
        self.result: Any = None
        self.max_images: int | None = None
        self.device: str | None = None

        self.preset = QComboBox(self)
        for key, (_, _, text) in PRESETS.items():
            self.preset.addItem(text, key)
        self.epochs = QSpinBox(self)
        self.epochs.setRange(1, 500)
        self.epochs.setValue(50)
        self.batch = QSpinBox(self)
        self.batch.setRange(2, 1024)
        self.batch.setValue(48)
        self.use_check = QCheckBox("Compare it with the current encoder when done", self)
        self.use_check.setChecked(True)
        self.use_check.setToolTip(
            "Both encoders are evaluated alike on the accepted labels; the trained one can replace the "
            "current one only when it scores better, and only when you say so"
        )
        self.verdict = QLabel("", self)
        self.verdict.setWordWrap(True)
        self.use_button = QPushButton("Use the trained encoder", self)
        self.use_button.setEnabled(False)
        self.use_button.setToolTip("Offered only when the evaluation says the trained encoder is better")
        self.use_button.clicked.connect(self._on_use_clicked)
        self.comparison = None
        form = QFormLayout()
        form.addRow("Encoder", self.preset)
        form.addRow("Epochs (at most)", self.epochs)
        form.addRow("Batch size", self.batch)
        form.addRow("", self.use_check)
        form.addRow("", self.verdict)
        form.addRow("", self.use_button)
        self.include_test_check = QCheckBox("Also train on the fixed test split", self)
        self.include_test_check.setToolTip(
            "Off by default: training on the test images, even without their labels, flatters an evaluation"
        )
        form.addRow("", self.include_test_check)
        self.start_button = QPushButton("Start training", self)
        self.start_button.setObjectName("primary")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setObjectName("danger")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        note = QLabel("SimCLR (Chen et al. 2020): two augmented views per image, NT-Xent loss, Adam, the learning "
                      "rate halved after 5 epochs without improvement, early stopping on the validation loss. "
                      "Labels are not used. A cancelled run keeps the last good encoder.", self)
        note.setObjectName("dimLabel")
        note.setWordWrap(True)

        facts = QFrame(self)
        facts.setObjectName("panel")
        facts_layout = QFormLayout(facts)
        self.device_label = QLabel("–", self)
        self.epoch_label = QLabel("–", self)
        self.loss_label = QLabel("–", self)
        self.eta_label = QLabel("–", self)
        self.lr_label = QLabel("–", self)
        for name, label in (("Device", self.device_label), ("Epoch", self.epoch_label), ("Loss", self.loss_label),
                            ("Learning rate", self.lr_label), ("Time left", self.eta_label)):
            facts_layout.addRow(name, label)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.curve = LossCurve(self)
        self.log = QPlainTextEdit(self)
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(500)
        self.log.setFixedHeight(110)

        left = QVBoxLayout()
        left.addLayout(form)
        left.addLayout(buttons)
        left.addWidget(note)
        left.addWidget(facts)
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(self.curve, 1)
        right.addWidget(self.progress)
        right.addWidget(self.log)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 10)
        left_host = QWidget(self)
        left_host.setLayout(left)
        left_host.setFixedWidth(360)
        layout.addWidget(left_host)
        layout.addLayout(right, 1)
        self.unavailable = training_unavailable()  # the lab-PC bundle has no PyTorch
        if self.unavailable:
            self.start_button.setEnabled(False)
            self.start_button.setToolTip(self.unavailable)
            self.log.setPlainText(self.unavailable)

    def start(self) -> JobHandle | None:
        """Start training in a worker (one run at a time)."""
        if (self.handle is not None and self.handle.running) or self.unavailable:
            return None
        library, preset = self.ctx.library, self.preset.currentData()
        epochs, batch, use = self.epochs.value(), self.batch.value(), self.use_check.isChecked()
        crop, max_images, device = self.ctx.settings.crop_data_bar, self.max_images, self.device
        self.curve.clear()
        self.log.clear()
        self.result = None
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        encoder_name, init, _ = PRESETS[preset]
        request = TrainingRequest(
            encoder_name=encoder_name, init=init, epochs=epochs, batch_size=batch, device=device,
            include_test=self.include_test_check.isChecked(), crop_data_bar=crop, max_images=max_images,
            use_when_done=False,  # never adopted blindly: see _on_finished
        )
        self._compare = use
        self.comparison = None
        self.verdict.setText("")
        self.use_button.setEnabled(False)
        self.handle = self.ctx.jobs.start("training", lambda token: training_job(library, request, token))
        self.handle.progress_changed.connect(self._on_progress)
        self.handle.finished.connect(self._on_finished)
        self.handle.failed.connect(lambda msg: self.log.appendPlainText(f"failed: {msg}"))
        self.handle.cancelled.connect(lambda: self.log.appendPlainText("cancelled: the previous encoder is kept"))
        self.handle.ended.connect(self._on_ended)
        return self.handle

    def cancel(self) -> None:
        """Stop between batches; nothing is written."""
        if self.handle is not None:
            self.handle.cancel()

    def _on_progress(self, progress: Progress) -> None:
        data = progress.data if isinstance(progress.data, dict) else {}
        if progress.total:
            self.progress.setRange(0, progress.total)
            self.progress.setValue(progress.done)
        if "device" in data:
            self.device_label.setText(str(data["device"]).upper())
        if "eta_s" in data:
            self.eta_label.setText(format_seconds(data.get("eta_s")))
        if "lr" in data:
            self.lr_label.setText(f"{data['lr']:.2e}")
        phase = data.get("phase")
        if phase == "batch":
            self.epoch_label.setText(f"{data.get('epoch')} (batch {data.get('batch')})")
            self.loss_label.setText(f"{data.get('train_loss', float('nan')):.4f} (running)")
        elif phase == "epoch":
            self.curve.add_point(int(data["epoch"]), data.get("train_loss"), data.get("val_loss"))
            val = data.get("val_loss")
            self.loss_label.setText(f"train {data['train_loss']:.4f}" + (f", val {val:.4f}" if val is not None else ""))
            self.epoch_label.setText(str(data["epoch"]))
            self.log.appendPlainText(progress.message)
        elif phase == "load" and progress.done == progress.total:
            self.log.appendPlainText(progress.message)

    def _on_finished(self, result: Any) -> None:
        self.result = result
        self.log.appendPlainText(
            f"done: {result.name} (best epoch {result.best_epoch}, {result.monitored} {result.best_loss:.4f}, "
            f"{result.epochs_run} epochs, {format_seconds(result.seconds)} on {result.device})"
        )
        self.eta_label.setText("done")
        self.trained.emit(result)
        if self._compare:
            self.compare(result.name)

    def compare(self, trained: str) -> JobHandle:
        """Evaluate the current and the trained encoder alike (in a worker); show both figures."""
        from nmid_desktop.workspace.training import compare_encoders_job

        library = self.ctx.library
        self.verdict.setText(f"Evaluating {trained} against the current encoder…")
        handle = self.ctx.jobs.start("compare", lambda token: compare_encoders_job(library, trained, token))
        handle.finished.connect(self._on_compared)
        handle.failed.connect(lambda msg: self.verdict.setText(f"Not evaluated ({msg}): the current encoder is kept."))
        self._compare_handle = handle
        return handle

    def _on_compared(self, comparison: Any) -> None:
        self.comparison = comparison
        if comparison.better:
            advice = "The trained encoder is better: use it for this library?"
        else:
            advice = "The trained encoder is not better: the current one is kept (the trained one stays in Settings)."
        self.verdict.setText(f"{comparison.summary()}. {advice}")
        self.use_button.setEnabled(bool(comparison.better))

    def _on_use_clicked(self) -> None:
        from nmid_desktop.workspace.training import use_encoder

        comparison = self.comparison
        if comparison is None or not comparison.better:
            return
        library, name = self.ctx.library, comparison.trained
        self.use_button.setEnabled(False)
        handle = self.ctx.jobs.start("use-encoder", lambda token: use_encoder(library, name))
        handle.finished.connect(lambda previous: self._on_used(name, previous))
        handle.failed.connect(lambda msg: self.verdict.setText(f"Not changed: {msg}"))

    def _on_used(self, name: str, previous: str) -> None:
        self.verdict.setText(f"{name} is now this library's encoder; {previous} can be chosen again in Settings.")
        self.encoder_chosen.emit(name)

    def _on_ended(self) -> None:
        self.start_button.setEnabled(not self.unavailable)
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
