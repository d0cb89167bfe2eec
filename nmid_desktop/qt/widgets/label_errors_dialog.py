"""The "likely mislabelled" review queue: one suspect at a time, one key per decision.

K keeps the label (recorded in the history as ``kept``), Enter accepts the suggestion, a digit
picks another class (the card's numbering); each decision is written in a worker on the
engine lane and the queue moves on to the next suspect at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from nmid_desktop.qt.context import ENGINE_LANE
from nmid_desktop.qt.imaging import gray_pixmap
from nmid_desktop.qt.widgets.flow_layout import FlowLayout
from nmid_desktop.qt.workers import JobHandle, JobManager
from nmid_desktop.workspace.review import SuspectItem, correct_label, keep_label

NUMBERED = 9


class LabelErrorsDialog(QDialog):
    """The queue of suspects, most likely wrong first.

    Args:
        suspects: From :func:`nmid_desktop.workspace.review.find_suspects`.
        classes: The taxonomy in the card's order (digit ``n`` is ``classes[n - 1]``).
        jobs: The window's job manager (decisions run on its engine lane).
    """

    label_changed = Signal(object)  # LabelChange of a written decision
    decision_failed = Signal(str)

    def __init__(self, suspects: Sequence[SuspectItem], classes: Sequence[str], jobs: JobManager,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("labelErrorsDialog")
        self.setWindowTitle("Likely mislabelled")
        self.suspects = list(suspects)
        self.classes = list(classes)
        self.jobs = jobs
        self.position = 0
        self.decisions: list[tuple[int, str, str]] = []  # (image_id, "keep" | "correct", label)
        self._seq = 0
        layout = QVBoxLayout(self)
        self.counter = QLabel("", self)
        self.counter.setObjectName("sectionTitle")
        layout.addWidget(self.counter)
        self.image = QLabel(self)
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.setMinimumSize(320, 320)
        layout.addWidget(self.image, 1)
        self.details = QLabel("", self)
        self.details.setWordWrap(True)
        self.details.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.details)
        buttons = QHBoxLayout()
        self.keep_button = QPushButton("Keep label  K", self)
        self.keep_button.setToolTip("The label is right: keep it (recorded as checked and kept)")
        self.keep_button.clicked.connect(self.keep)
        buttons.addWidget(self.keep_button)
        self.accept_button = QPushButton("Accept suggestion  ⏎", self)
        self.accept_button.setObjectName("primary")
        self.accept_button.clicked.connect(self.accept_suggestion)
        buttons.addWidget(self.accept_button)
        layout.addLayout(buttons)
        chips_host = QWidget(self)
        chips = FlowLayout(chips_host, spacing=4)
        for index, name in enumerate(self.classes):
            prefix = f"{index + 1}  " if index < NUMBERED else ""
            chip = QPushButton(f"{prefix}{name}", chips_host)
            chip.setObjectName("classChip")
            chip.setToolTip(f"Relabel as '{name}'")
            chip.clicked.connect(lambda _=False, n=name: self.choose(n))
            chips.addWidget(chip)
        layout.addWidget(chips_host)
        self.message = QLabel("", self)
        self.message.setObjectName("dimLabel")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        for button in (self.keep_button, self.accept_button, *chips_host.findChildren(QPushButton)):
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the keys belong to the queue
        self.resize(560, 640)
        self._show_current()

    # -- what is shown ----------------------------------------------------------------------------
    @property
    def current(self) -> SuspectItem | None:
        """The suspect shown now (None when the queue is done)."""
        return self.suspects[self.position] if self.position < len(self.suspects) else None

    def _show_current(self) -> None:
        suspect = self.current
        done = suspect is None
        for button in (self.keep_button, self.accept_button):
            button.setEnabled(not done)
        if suspect is None:
            self.counter.setText(f"DONE · {len(self.decisions)} decision(s)")
            self.image.clear()
            self.image.setText("No more suspects.")
            self.details.setText("")
            return
        self.counter.setText(f"SUSPECT {self.position + 1} OF {len(self.suspects)}")
        if suspect.thumb is not None:
            self.image.setPixmap(gray_pixmap(suspect.thumb))
        else:
            self.image.setText("(image unavailable)")
        self.details.setText(
            f"{suspect.name or suspect.image_id}<br>label <b>{suspect.label}</b> · suggested "
            f"<b>{suspect.suggested}</b> · <span style='color:#9aa0a6'>likely wrong {suspect.score:.2f}</span>"
        )
        self.accept_button.setText(f"Accept {suspect.suggested}  ⏎")

    # -- decisions --------------------------------------------------------------------------------
    def keep(self) -> JobHandle | None:
        """Keep the current suspect's label (K)."""
        suspect = self.current
        if suspect is None:
            return None
        return self._decide(suspect, "keep", suspect.label)

    def accept_suggestion(self) -> JobHandle | None:
        """Relabel the current suspect as suggested (Enter)."""
        suspect = self.current
        if suspect is None:
            return None
        return self._decide(suspect, "correct", suspect.suggested)

    def choose(self, label: str) -> JobHandle | None:
        """Relabel the current suspect as ``label`` (a digit or a chip); the same label keeps it."""
        suspect = self.current
        if suspect is None:
            return None
        if label == suspect.label:
            return self._decide(suspect, "keep", label)
        return self._decide(suspect, "correct", label)

    def _decide(self, suspect: SuspectItem, action: str, label: str) -> JobHandle:
        self._seq += 1
        image_id = suspect.image_id
        if action == "keep":
            handle = self.jobs.start(f"label-suspect-{self._seq}", lambda eng, token: keep_label(eng, image_id),
                                     lane=ENGINE_LANE)
        else:
            handle = self.jobs.start(f"label-suspect-{self._seq}",
                                     lambda eng, token: correct_label(eng, image_id, label), lane=ENGINE_LANE)
        handle.finished.connect(self.label_changed)
        handle.failed.connect(lambda msg: self._on_decision_failed(suspect, msg))
        self.decisions.append((image_id, action, label))
        self.message.setText(f"{'Kept' if action == 'keep' else 'Relabelled'} {suspect.name or image_id} → {label}")
        self.position += 1
        self._show_current()
        return handle

    def _on_decision_failed(self, suspect: SuspectItem, message: str) -> None:
        self.message.setText(f"Not saved for {suspect.name or suspect.image_id}: {message}")
        self.decision_failed.emit(message)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        """K keeps, Enter accepts the suggestion, 1-9 picks a class, Esc closes."""
        key = event.key()
        if key == Qt.Key.Key_K:
            self.keep()
        elif key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.accept_suggestion()
        elif Qt.Key.Key_1 <= key <= Qt.Key.Key_9:
            number = key - Qt.Key.Key_0
            if number <= min(NUMBERED, len(self.classes)):
                self.choose(self.classes[number - 1])
        else:
            super().keyPressEvent(event)
