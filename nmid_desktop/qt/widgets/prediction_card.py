"""The prediction card: local ranking, the model's answer, their agreement, and the label decision."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QEvent, QObject, QRectF, QSize, QStringListModel, Qt, Signal
from PySide6.QtGui import QColor, QKeyEvent, QKeySequence, QPainter
from PySide6.QtWidgets import (
    QCompleter,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from nmid_desktop.predict.novelty import Novelty
from nmid_desktop.qt.imaging import SOURCE_NAMES, class_color
from nmid_desktop.qt.widgets.flow_layout import FlowLayout
from nmid_desktop.workspace.display import ModelAnswer

SHOWN_CLASSES = 5
NUMBERED_CLASSES = 9


class RankingBars(QWidget):
    """Horizontal probability bars for the best classes of a ranking."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.items: list[tuple[str, float]] = []
        self.colors: dict[str, QColor] = {}
        self.highlight: str | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_items(self, items: Sequence[tuple[str, float]], colors: dict[str, QColor], highlight: str | None = None) -> None:
        """Show ``(label, probability)`` best first."""
        self.items = list(items)[:SHOWN_CLASSES]
        self.colors = colors
        self.highlight = highlight
        self.setFixedHeight(max(1, len(self.items)) * 22)
        self.update()

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(280, max(1, len(self.items)) * 22)

    def paintEvent(self, event) -> None:  # noqa: N802, ANN001
        painter = QPainter(self)
        metrics = painter.fontMetrics()
        name_w = min(140, max((metrics.horizontalAdvance(n) for n, _ in self.items), default=60) + 10)
        for row, (label, prob) in enumerate(self.items):
            y = row * 22
            bold = label == self.highlight
            font = painter.font()
            font.setBold(bold)
            painter.setFont(font)
            painter.setPen(QColor("#e8eaed"))
            text = metrics.elidedText(label, Qt.TextElideMode.ElideRight, name_w - 6)
            painter.drawText(QRectF(0, y, name_w, 20), Qt.AlignmentFlag.AlignVCenter, text)
            bar = QRectF(name_w, y + 5, max(10.0, self.width() - name_w - 52), 10)
            painter.fillRect(bar, QColor("#3c4043"))
            color = self.colors.get(label, QColor("#8ab4f8"))
            painter.fillRect(QRectF(bar.left(), bar.top(), bar.width() * max(0.0, min(1.0, prob)), bar.height()), color)
            painter.setPen(QColor("#bdc1c6"))
            painter.drawText(QRectF(bar.right() + 6, y, 46, 20), Qt.AlignmentFlag.AlignVCenter, f"{prob:.0%}")


class PredictionCard(QFrame):
    """Local ranking, the model's answer and agreement, and the controls to accept or correct.

    Signals carry the user's decision; the window writes it to the library in a worker.
    """

    accept_requested = Signal()  # take the suggested label
    label_chosen = Signal(str)  # correct to this label
    model_requested = Signal()  # ask the model now
    model_cancel_requested = Signal()  # stop waiting for the model's answer

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("predictionCard")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 12)
        layout.setSpacing(6)

        self.local_title = QLabel("LOCAL PREDICTION", self)
        self.local_title.setObjectName("sectionTitle")
        layout.addWidget(self.local_title)
        self.local_summary = QLabel("Open an image to classify it.", self)
        self.local_summary.setObjectName("headline")
        self.local_summary.setWordWrap(True)
        layout.addWidget(self.local_summary)
        # Shown instead of the confident label when the image is unlike the library.
        self.novelty_badge = QLabel("", self)
        self.novelty_badge.setObjectName("noveltyBadge")
        self.novelty_badge.setWordWrap(True)
        self.novelty_badge.setStyleSheet(
            "QLabel#noveltyBadge { color: #fdd663; border: 1px solid #fdd663; border-radius: 4px; padding: 4px 6px; "
            "font-weight: bold; }"
        )
        self.novelty_badge.hide()
        layout.addWidget(self.novelty_badge)
        self.local_bars = RankingBars(self)
        layout.addWidget(self.local_bars)

        model_head = QHBoxLayout()
        self.model_title = QLabel("MODEL", self)
        self.model_title.setObjectName("sectionTitle")
        model_head.addWidget(self.model_title)
        model_head.addStretch(1)
        self.agreement = QLabel("", self)
        self.agreement.setObjectName("pill")
        model_head.addWidget(self.agreement)
        self.ask_button = QPushButton("Ask model", self)
        self.ask_button.setToolTip("Send this image and its demonstrations to the configured model")
        self.ask_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.ask_button.clicked.connect(self.model_requested)
        model_head.addWidget(self.ask_button)
        self.cancel_model_button = QPushButton("Cancel", self)
        self.cancel_model_button.setObjectName("cancelModel")
        self.cancel_model_button.setToolTip("Stop waiting for the model (its late answer is dropped)")
        self.cancel_model_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.cancel_model_button.clicked.connect(self.model_cancel_requested)
        self.cancel_model_button.hide()
        model_head.addWidget(self.cancel_model_button)
        layout.addLayout(model_head)
        self.model_summary = QLabel("", self)
        self.model_summary.setObjectName("headline")
        self.model_summary.setWordWrap(True)
        layout.addWidget(self.model_summary)
        self.rationale = QLabel("", self)
        self.rationale.setWordWrap(True)
        self.rationale.setObjectName("rationale")
        self.rationale.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.rationale)

        line = QFrame(self)
        line.setFrameShape(QFrame.Shape.HLine)
        line.setObjectName("separator")
        layout.addWidget(line)

        self.current = QLabel("", self)
        self.current.setWordWrap(True)
        layout.addWidget(self.current)
        entry = QHBoxLayout()
        self.class_box = QLineEdit(self)
        self.class_box.setObjectName("classBox")
        self.class_box.setPlaceholderText("Type a class… (Ctrl+Enter creates a new one, Esc leaves)")
        self.class_box.setClearButtonEnabled(True)
        self.class_box.setAcceptDrops(False)  # drops are for images, anywhere on the window
        self._completer_model = QStringListModel(self)
        completer = QCompleter(self._completer_model, self)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.class_box.setCompleter(completer)
        self.class_box.returnPressed.connect(self._on_class_box_return_pressed)
        # The box must never trap the label keys: see eventFilter.
        self.class_box.installEventFilter(self)
        self.class_box.textEdited.connect(lambda _text: self.hint.hide())
        entry.addWidget(self.class_box, 1)
        self.accept_button = QPushButton("Accept  ⏎", self)
        self.accept_button.setObjectName("primary")
        self.accept_button.setToolTip("Accept the suggested label (Enter)")
        self.accept_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.accept_button.clicked.connect(self.accept_requested)
        entry.addWidget(self.accept_button)
        layout.addLayout(entry)
        self.hint = QLabel("", self)
        self.hint.setObjectName("dimLabel")
        self.hint.setWordWrap(True)
        self.hint.hide()
        layout.addWidget(self.hint)
        self._chips_host = QWidget(self)
        self._chips = FlowLayout(self._chips_host, spacing=4)
        layout.addWidget(self._chips_host)

        self.classes: list[str] = []
        self.keys: dict[str, int] = {}  # class -> number key, as the library stores them
        self.colors: dict[str, QColor] = {}
        self.suggested: str | None = None
        self.untrusted: str | None = None  # the nearest class of an image unlike the library (never a suggestion)
        self.accept_label: str | None = None
        self.set_model_visible(False)
        self.set_model(None)
        self.set_enabled_for_image(False)

    # -- content ------------------------------------------------------------------------------
    def set_classes(
        self,
        classes: Sequence[str],
        explicit_colors: dict[str, str] | None = None,
        keys: dict[str, int] | None = None,
    ) -> None:
        """The taxonomy: completion list, colours and the chips, numbered by the library's keys.

        ``keys`` (class -> digit) are the library's stored keys; without them the first nine
        classes in order get 1-9 (a card shown without a library).
        """
        self.classes = list(classes)
        if keys is None:
            keys = {name: i + 1 for i, name in enumerate(self.classes[:NUMBERED_CLASSES])}
        self.keys = {name: key for name, key in keys.items() if name in self.classes and 1 <= key <= NUMBERED_CLASSES}
        explicit_colors = explicit_colors or {}
        self.colors = {c: class_color(c, self.classes, explicit_colors.get(c, "")) for c in self.classes}
        self._completer_model.setStringList(self.classes)
        self._chips.clear()
        # Chips in key order, then the classes without a key by name: the row reads 1, 2, 3 ...
        ordered = sorted(self.classes, key=lambda n: (self.keys.get(n, NUMBERED_CLASSES + 1), self.classes.index(n)))
        for name in ordered:
            key = self.keys.get(name)
            prefix = f"{key}  " if key is not None else ""
            chip = QPushButton(f"{prefix}{name}", self._chips_host)
            chip.setObjectName("classChip")
            color = self.colors[name]
            chip.setStyleSheet(
                f"QPushButton#classChip {{ border-left: 4px solid {color.name()}; }}"
            )
            chip.setToolTip(f"Label as '{name}'" + (f" (key {key})" if key is not None else ""))
            chip.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            chip.clicked.connect(lambda _=False, n=name: self.label_chosen.emit(n))
            self._chips.addWidget(chip)
        self._chips_host.updateGeometry()

    def class_for_key(self, number: int) -> str | None:
        """The class behind number key ``number`` (the library's key), if any."""
        return next((name for name, key in self.keys.items() if key == number), None)

    def set_enabled_for_image(self, enabled: bool) -> None:
        """Enable the decision controls only while an image is shown."""
        self.class_box.setEnabled(enabled)
        self.accept_button.setEnabled(enabled and self.suggested is not None)
        self._chips_host.setEnabled(enabled)

    def set_waiting(self, text: str) -> None:
        """Show that the local prediction is being computed."""
        self.local_summary.setText(text)
        self.local_bars.set_items([], self.colors)
        self.suggested = None
        self.untrusted = None
        self.novelty_badge.hide()
        self.accept_button.setEnabled(False)

    def set_local(
        self, items: Sequence[tuple[str, float]], predictor: str, n_demos: int, *,
        novelty: Novelty | None = None, stale: bool = False,
    ) -> None:
        """Show the local predictor's ranking; its top class becomes the suggestion.

        An image unlike the library (``novelty.novel``) shows the badge instead: the nearest
        class appears small, marked not trusted, and is no suggestion (Enter does not take it).
        ``stale``: the calibration predates the latest label changes (said in the tooltip).
        """
        self.untrusted = None
        self.novelty_badge.hide()
        if items and novelty is not None and novelty.novel:
            top = items[0][0]
            self.novelty_badge.setText(f"⚠ {novelty.text}")
            self.novelty_badge.setToolTip(
                f"Novelty {novelty.score:.2f} (threshold {novelty.threshold:.2f}): the library's own images match "
                f"their nearest neighbour at {novelty.typical:.2f} typically, this one only at {novelty.nearest:.2f}. "
                "A percentage here would not mean anything: choose the class yourself."
            )
            self.novelty_badge.show()
            self.local_summary.setText(
                f"<span style='color:#9aa0a6; font-size:9pt'>not trusted · nearest class {top}</span>"
            )
            self.local_bars.set_items([], self.colors)
            self.suggested = None
            self.untrusted = top
        elif not items:
            self.local_summary.setText("No labelled images yet: choose a class below.")
            self.local_bars.set_items([], self.colors)
            self.suggested = None
        else:
            top, prob = items[0]
            how = "kNN vote" if predictor == "knn" else "logistic probe" if predictor == "logreg" else predictor
            basis = f" over {n_demos} accepted demonstrations" if predictor == "knn" and n_demos else " · accepted labels only"
            self.local_summary.setText(f"<b>{top}</b> &nbsp;{prob:.0%} <span style='color:#9aa0a6'>· {how}{basis}</span>")
            self.local_bars.set_items(items, self.colors, highlight=top)
            self.suggested = top
        self.local_summary.setToolTip(
            "Demonstrations are accepted labels only: predictions still pending review are never used."
            + (" The calibration is being refreshed after your latest labels." if stale else "")
        )
        self.accept_button.setEnabled(self.class_box.isEnabled() and self.suggested is not None)
        self._update_agreement()

    def set_model_visible(self, visible: bool, model: str = "") -> None:
        """Show the model section (only when an endpoint is configured)."""
        for widget in (self.model_title, self.model_summary, self.rationale, self.agreement, self.ask_button):
            widget.setVisible(visible)
        self.model_title.setText(f"MODEL · {model}" if model else "MODEL")
        if not visible:
            self._model: ModelAnswer | None = None
            self.cancel_model_button.hide()

    @property
    def model_waiting(self) -> bool:
        """Whether the card waits for the model's answer."""
        return getattr(self, "_waiting", False)

    def _set_waiting(self, waiting: bool) -> None:
        self._waiting = waiting
        self.cancel_model_button.setVisible(waiting and not self.ask_button.isHidden())
        self.ask_button.setEnabled(not waiting)

    def set_model_waiting(self, text: str = "Asking the model…") -> None:
        """The model call is under way (Cancel is offered)."""
        self._model = None
        self._set_waiting(True)
        self.model_summary.setText(text)
        self.rationale.setText("")
        self._update_agreement()

    def set_model_cancelled(self) -> None:
        """The user stopped waiting: the local prediction stands."""
        self._model = None
        self._set_waiting(False)
        self.model_summary.setText("<span style='color:#fdd663'>Cancelled</span>")
        self.rationale.setText("The model was not asked to the end; a late answer is dropped. Ask model (Ctrl+M) to try again.")
        self._update_agreement()

    def set_model_error(self, message: str) -> None:
        """The model call failed; the local prediction stands."""
        self._model = None
        self._set_waiting(False)
        self.model_summary.setText("<span style='color:#f28b82'>Model unavailable</span>")
        self.rationale.setText(message)
        self._update_agreement()

    def set_model(self, answer: ModelAnswer | None, stored: bool = False) -> None:
        """Show the model's answer (None clears it); ``stored``: an answer saved earlier, shown again."""
        self._model = answer
        self._set_waiting(False)
        if answer is None:
            self.model_summary.setText("<span style='color:#9aa0a6; font-size:9pt'>Not asked. Ask model (Ctrl+M) "
                                       "for a second opinion from the same demonstrations.</span>")
            self.rationale.setText("")
        elif not answer.valid or answer.label is None:
            self.model_summary.setText("<span style='color:#f28b82'>No valid answer</span>")
            self.rationale.setText(answer.reason or answer.rationale)
        else:
            conf = f" &nbsp;{answer.confidence:.0%}" if answer.confidence is not None else ""
            cost = " · cached" if answer.cached else (f" · ${answer.cost_usd:.4f}" if answer.cost_usd else "")
            if stored:
                cost = " · stored answer (not asked again)"
            self.model_summary.setText(f"<b>{answer.label}</b>{conf} <span style='color:#9aa0a6'>{cost}</span>")
            self.rationale.setText(answer.rationale)
        self._update_agreement()

    def _update_agreement(self) -> None:
        answer = getattr(self, "_model", None)
        if answer is None or not answer.valid or answer.label is None or self.suggested is None:
            self.agreement.setText("")
            self.agreement.setProperty("state", "")
        elif answer.label == self.suggested:
            self.agreement.setText("✓ agrees with local")
            self.agreement.setProperty("state", "agree")
        else:
            self.agreement.setText("≠ disagrees with local")
            self.agreement.setProperty("state", "disagree")
        self.agreement.style().unpolish(self.agreement)
        self.agreement.style().polish(self.agreement)

    def set_accept_label(self, label: str | None, pending: bool = False) -> None:
        """Name on the Accept button what Enter accepts (``pending``: the label awaiting review)."""
        self.accept_label = label
        if label is None:
            self.accept_button.setText("Accept  ⏎")
            self.accept_button.setToolTip("Nothing to accept yet: choose a class (1-9 or type its name)")
        else:
            what = "the pending label" if pending else "the suggestion"
            self.accept_button.setText(f"Accept {label}  ⏎")
            self.accept_button.setToolTip(f"Accept {what} '{label}' (Enter)")
        self.accept_button.setEnabled(self.class_box.isEnabled() and label is not None)

    @property
    def model_answer(self) -> ModelAnswer | None:
        """The model's answer shown now, if any."""
        return getattr(self, "_model", None)

    def set_current_label(self, label: str | None, source: str | None, review: str | None, actor: str | None = None) -> None:
        """The label the image carries in the library now (``actor``: who set it, on a shared library)."""
        if label is None:
            self.current.setText("<span style='color:#9aa0a6'>Not labelled yet.</span>")
            return
        who = SOURCE_NAMES.get(source or "", source or "")
        color = self.colors.get(label, QColor("#8ab4f8")).name()
        state = {"accepted": "✓ accepted", "pending": "pending review", "rejected": "rejected"}.get(review or "", review or "")
        if actor:
            who = f"{who} ({actor})"
        self.current.setText(
            f"Label: <b style='color:{color}'>{label}</b> <span style='color:#9aa0a6'>· {who} · {state}</span>"
        )

    # -- the class box ------------------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        """Keep the label keys for the label while the class box has focus.

        Ctrl+Z / Ctrl+Shift+Z / Ctrl+Y undo and redo *labels*, and digits pick a class
        while the box is empty: their shortcut override is withheld from the box, so the
        window's shortcuts get them. Escape leaves the box; Ctrl+Enter creates a class.
        """
        if watched is self.class_box and isinstance(event, QKeyEvent):
            if event.type() == QEvent.Type.ShortcutOverride:
                if _is_history_key(event):
                    return True  # not accepted: the window's Undo/Redo action fires
                if not self.class_box.text() and event.text().isdigit() and event.text() != "0":
                    return True
            elif event.type() == QEvent.Type.KeyPress:
                if event.key() == Qt.Key.Key_Escape:
                    self.leave_class_box()
                    return True
                if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and (
                    event.modifiers() & Qt.KeyboardModifier.ControlModifier
                ):
                    self.submit_class_box(create=True)
                    return True
        return super().eventFilter(watched, event)

    def leave_class_box(self) -> None:
        """Clear the box and give the keyboard back to the window (Escape)."""
        self.class_box.clear()
        self.hint.hide()
        self.class_box.clearFocus()
        window = self.window()
        if window is not None:
            window.setFocus(Qt.FocusReason.OtherFocusReason)

    def match_class(self, text: str) -> str | None:
        """The existing class the typed text names: exact (any case) or the only one containing it."""
        text = text.strip().lower()
        if not text:
            return None
        match = next((c for c in self.classes if c.lower() == text), None)
        if match is None:
            candidates = [c for c in self.classes if text in c.lower()]
            match = candidates[0] if len(candidates) == 1 else None
        return match

    def submit_class_box(self, create: bool = False) -> None:
        """Enter in the box: label with the class typed; a new class only with ``create`` (Ctrl+Enter)."""
        text = self.class_box.text().strip()
        if not text:
            self.leave_class_box()
            self.accept_requested.emit()
            return
        match = self.match_class(text)
        if match is None and not create:
            self.hint.setText(
                f"“{text}” is not a class yet. Ctrl+Enter creates it; Esc leaves the box."
            )
            self.hint.show()
            return
        self.leave_class_box()
        self.label_chosen.emit(match or text)

    def _on_class_box_return_pressed(self) -> None:
        self.submit_class_box(create=False)


def _is_history_key(event: QKeyEvent) -> bool:
    combo = event.keyCombination()
    sequence = QKeySequence(combo)
    if event.matches(QKeySequence.StandardKey.Undo) or event.matches(QKeySequence.StandardKey.Redo):
        return True
    return sequence in (QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y"))
