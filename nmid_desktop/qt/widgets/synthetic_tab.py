"""Synthetic images made from the current image's description: generate, then accept or discard each."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from nmid_desktop.qt.context import ENGINE_LANE, AppContext
from nmid_desktop.qt.imaging import gray_pixmap
from nmid_desktop.qt.widgets.flow_layout import FlowLayout
from nmid_desktop.qt.workers import JobHandle
from nmid_desktop.workspace.engine import QueryResult
from nmid_desktop.workspace.model_tasks import SyntheticItem, synthesize_job, synthetic_for

THUMB = 180


class SyntheticCard(QFrame):
    """One synthetic image with its review state and Accept / Discard."""

    def __init__(self, item: SyntheticItem, tab: SyntheticTab) -> None:
        super().__init__(tab.body)
        self.item = item
        self.setObjectName("demoTile")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        image = QLabel(self)
        image.setFixedSize(THUMB, THUMB)
        image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        image.setObjectName("demoThumb")
        if item.thumb is not None:
            image.setPixmap(gray_pixmap(item.thumb).scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio,
                                                           Qt.TransformationMode.SmoothTransformation))
        layout.addWidget(image)
        self.state = QLabel(f"{item.label or '—'} · {item.review}", self)
        self.state.setObjectName("dimLabel")
        layout.addWidget(self.state)
        row = QHBoxLayout()
        self.accept_button = QPushButton("Accept", self)
        self.discard_button = QPushButton("Discard", self)
        self.discard_button.setObjectName("danger")
        for button in (self.accept_button, self.discard_button):
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            row.addWidget(button)
        layout.addLayout(row)
        self.accept_button.clicked.connect(lambda: tab.review(item.image_id, True))
        self.discard_button.clicked.connect(lambda: tab.review(item.image_id, False))
        self.set_review(item.review)

    def set_review(self, review: str) -> None:
        """Show a new review state."""
        self.state.setText(f"{self.item.label or '—'} · {review}")
        self.accept_button.setEnabled(review != "accepted")
        self.discard_button.setEnabled(review != "rejected")


class SyntheticTab(QWidget):
    """Generate N images from the description (pending review); only accepted ones are ever used."""

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("syntheticTab")
        self.ctx = ctx
        self.image_id: int | None = None
        self.count = QSpinBox(self)
        self.count.setRange(1, 10)
        self.count.setValue(2)
        self.count.setPrefix("N = ")
        self.generate_button = QPushButton("Generate", self)
        self.generate_button.setObjectName("primary")
        self.generate_button.setToolTip("Make synthetic micrographs from this image's description (needs a label and a description)")
        self.generate_button.clicked.connect(self.generate)
        self.info = QLabel("Synthetic images augment scarce classes. Review each one: discarded images are never used.", self)
        self.info.setObjectName("dimLabel")
        self.info.setWordWrap(True)
        head = QHBoxLayout()
        head.addWidget(self.count)
        head.addWidget(self.generate_button)
        head.addWidget(self.info, 1)
        self.scroll = QScrollArea(self)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.body = QWidget(self.scroll)
        self.body.setObjectName("demoBody")
        self.flow = FlowLayout(self.body, spacing=10)
        self.flow.setContentsMargins(8, 8, 8, 8)
        self.scroll.setWidget(self.body)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addLayout(head)
        layout.addWidget(self.scroll, 1)
        self.cards: dict[int, SyntheticCard] = {}
        self._update_enabled()
        ctx.endpoint_changed.connect(lambda ok: self._update_enabled())

    def on_query(self, result: QueryResult) -> None:
        """A new current image: list what was made from it before."""
        if result.record.synthetic:
            self.image_id = None
            self._show([])
            self.info.setText("This is a synthetic image; synthetic images are made from real ones.")
            self._update_enabled()
            return
        self.image_id = result.image_id
        self._update_enabled()
        library, image_id = self.ctx.library, result.image_id
        handle = self.ctx.jobs.start("synthetic-load", lambda token: synthetic_for(library, image_id))
        handle.finished.connect(lambda items, i=image_id: self._show(items) if i == self.image_id else None)

    def generate(self) -> JobHandle | None:
        """Ask the image model for N images (they enter the library pending review)."""
        if self.image_id is None:
            return None
        library, settings, image_id, n = self.ctx.library, self.ctx.settings, self.image_id, self.count.value()
        self.info.setText(f"Generating {n} image(s) with {settings.lmm.image_model}…")
        handle = self.ctx.jobs.start("synthesize", lambda token: synthesize_job(library, settings, image_id, n, token))
        handle.finished.connect(lambda items: self._on_generated(image_id, items))
        handle.failed.connect(lambda msg: self.info.setText(f"<span style='color:#f28b82'>{msg}</span>"))
        handle.ended.connect(self._update_enabled)
        self._update_enabled()
        return handle

    def _on_generated(self, image_id: int, items: list[SyntheticItem]) -> None:
        self.ctx.labels_changed.emit()
        self.ctx.status_refresh_requested.emit()
        self.ctx.message.emit(f"{len(items)} synthetic image(s) await review")
        if image_id == self.image_id:
            self.info.setText("Accept the images that agree with the real one; discard the others.")
            self._show(items)

    def review(self, image_id: int, accept: bool) -> JobHandle:
        """Accept or discard one synthetic image."""
        review = "accepted" if accept else "rejected"
        # Through the engine lane, like every label decision: in order, and the classifier is told.
        handle = self.ctx.jobs.start(
            f"label-synthetic-{image_id}-{review}",
            lambda eng, token: eng.set_review(image_id, review, actor=""),
            lane=ENGINE_LANE,
        )
        handle.finished.connect(lambda change: self._on_reviewed(image_id, change.record.review))
        return handle

    def _on_reviewed(self, image_id: int, review: str) -> None:
        card = self.cards.get(image_id)
        if card is not None:
            card.set_review(review)
        self.ctx.labels_changed.emit()

    def _show(self, items: list[SyntheticItem]) -> None:
        self.flow.clear()
        self.cards = {}
        for item in items:
            card = SyntheticCard(item, self)
            self.flow.addWidget(card)
            self.cards[item.image_id] = card
        self.body.updateGeometry()

    def _update_enabled(self) -> None:
        ok = bool(getattr(self.ctx, "endpoint_ok", False)) and self.image_id is not None
        self.generate_button.setEnabled(ok and not self.ctx.jobs.is_running("synthesize"))
