"""The top-K demonstrations beside the query: thumbnail, label, similarity and source."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QMouseEvent, QPainter, QPixmap
from PySide6.QtWidgets import (
    QFrame,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from nmid_desktop.qt.imaging import SOURCE_NAMES, class_color, gray_pixmap
from nmid_desktop.qt.widgets.flow_layout import FlowLayout
from nmid_desktop.workspace.display import DemoTile

TILE_THUMB = 148


class SimilarityBar(QWidget):
    """A thin bar for a cosine similarity in [-1, 1] with its value."""

    def __init__(self, similarity: float, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.similarity = similarity
        self.setFixedHeight(16)
        self.setToolTip(f"cosine similarity {similarity:.3f}")

    def paintEvent(self, event) -> None:  # noqa: N802, ANN001
        painter = QPainter(self)
        rect = QRectF(self.rect()).adjusted(0, 5, -44, -5)
        painter.fillRect(rect, QColor("#3c4043"))
        share = max(0.0, min(1.0, self.similarity))
        painter.fillRect(QRectF(rect.left(), rect.top(), rect.width() * share, rect.height()), QColor("#8ab4f8"))
        painter.setPen(QColor("#bdc1c6"))
        painter.drawText(QRectF(rect.right() + 4, 0, 40, self.height()), Qt.AlignmentFlag.AlignVCenter, f"{self.similarity:.3f}")


class DemoTileWidget(QFrame):
    """One demonstration. Click the label to take it; double-click the image to open it."""

    label_clicked = Signal(str)
    activated = Signal(int)

    def __init__(self, tile: DemoTile, rank: int, color: QColor, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tile = tile
        self.setObjectName("demoTile")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setFixedWidth(TILE_THUMB + 16)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.setSpacing(4)
        self.image = QLabel(self)
        self.image.setFixedSize(TILE_THUMB, TILE_THUMB)
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.setObjectName("demoThumb")
        if tile.thumb is not None:
            pixmap = gray_pixmap(tile.thumb).scaled(
                TILE_THUMB, TILE_THUMB, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
            )
            self.image.setPixmap(pixmap)
        else:
            self.image.setText("unreadable")
        self.image.setToolTip(f"#{rank}  image {tile.image_id}: {tile.name}\nDouble-click to open")
        layout.addWidget(self.image)
        self.label_button = QPushButton(tile.label, self)
        self.label_button.setObjectName("classChip")
        self.label_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.label_button.setToolTip(f"Take the label '{tile.label}' for the current image")
        self.label_button.setStyleSheet(
            f"QPushButton#classChip {{ background: {color.name()}; color: {'#000' if color.lightness() > 140 else '#fff'}; }}"
        )
        self.label_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.label_button.clicked.connect(lambda: self.label_clicked.emit(self.tile.label))
        layout.addWidget(self.label_button)
        layout.addWidget(SimilarityBar(tile.similarity, self))
        source = SOURCE_NAMES.get(tile.source, tile.source or "unknown")
        if tile.synthetic:
            source = "synthetic"
        meta = QLabel(f"#{rank} · {source}", self)
        meta.setObjectName("dimLabel")
        layout.addWidget(meta)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self.activated.emit(self.tile.image_id)


class DemonstrationsGrid(QScrollArea):
    """The demonstrations retrieved for the current image, best first, wrapping to the width."""

    label_clicked = Signal(str)
    image_activated = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("demonstrations")
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self._body = QWidget(self)
        self._body.setObjectName("demoBody")
        self._flow = FlowLayout(self._body, spacing=10)
        self._flow.setContentsMargins(10, 10, 10, 10)
        self._body.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.setWidget(self._body)
        self._message = QLabel("", self._body)
        self._message.setObjectName("placeholder")
        self._message.setWordWrap(True)
        self._message.setFixedWidth(360)
        self._flow.addWidget(self._message)
        self.tiles: list[DemoTileWidget] = []
        self.show_message("Demonstrations: the most similar labelled images appear here.")

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(3 * (TILE_THUMB + 26) + 20, 420)

    def show_message(self, text: str) -> None:
        """Replace the tiles with a message (empty library, working, an error)."""
        self._clear_tiles()
        self._message.setText(text)
        self._message.show()

    def set_demonstrations(self, tiles: Sequence[DemoTile], classes: list[str], colors: dict[str, str] | None = None) -> None:
        """Show the demonstrations, best first."""
        self._clear_tiles()
        if not tiles:
            self.show_message("No labelled images to compare with yet: label a few images, or import a labelled folder.")
            return
        self._message.hide()
        colors = colors or {}
        for rank, tile in enumerate(tiles, start=1):
            widget = DemoTileWidget(tile, rank, class_color(tile.label, classes, colors.get(tile.label, "")), self._body)
            widget.label_clicked.connect(self.label_clicked)
            widget.activated.connect(self.image_activated)
            self._flow.addWidget(widget)
            self.tiles.append(widget)
        self._body.updateGeometry()

    def _clear_tiles(self) -> None:
        for widget in self.tiles:
            self._flow.removeWidget(widget)
            widget.setParent(None)
            widget.deleteLater()
        self.tiles = []


def placeholder_pixmap(size: int) -> QPixmap:
    """A neutral square shown while a thumbnail loads."""
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor("#303134"))
    return pixmap
