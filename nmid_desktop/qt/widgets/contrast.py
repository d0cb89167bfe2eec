"""Display contrast: a histogram in raw units with black and white points to drag.

For 8-bit data the levels go to the viewer's colour table at once. For deeper
data (16-bit, 32-bit, float) the window re-stretches the raw samples in a worker,
so no precision is lost to an earlier 8-bit view.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QMouseEvent, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QToolButton, QVBoxLayout, QWidget

from nmid_desktop.workspace.display import Histogram


def _fmt(value: float) -> str:
    if abs(value) >= 1000 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.4g}"


class HistogramStrip(QWidget):
    """The histogram (log counts) with draggable black and white markers."""

    levels_changed = Signal(float, float)
    levels_reset = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(46)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMouseTracking(True)
        self.setToolTip("Drag the markers to set the black and white points; double-click for automatic levels")
        self._hist: Histogram | None = None
        self._black = 0.0
        self._white = 255.0
        self._dragging: str | None = None

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(240, 52)

    def set_histogram(self, hist: Histogram | None) -> None:
        """Show a new histogram with its automatic levels."""
        self._hist = hist
        if hist is not None:
            self._black, self._white = hist.auto_black, hist.auto_white
        self.update()

    def levels(self) -> tuple[float, float]:
        """(black, white) in raw units."""
        return self._black, self._white

    def set_levels(self, black: float, white: float) -> None:
        """Move the markers (no signal)."""
        self._black, self._white = black, white
        self.update()

    def _plot_rect(self) -> QRectF:
        return QRectF(self.rect()).adjusted(6, 4, -6, -6)

    def _x_of(self, value: float) -> float:
        rect = self._plot_rect()
        hist = self._hist
        if hist is None or hist.maximum <= hist.minimum:
            return rect.left()
        t = (value - hist.minimum) / (hist.maximum - hist.minimum)
        return rect.left() + max(0.0, min(1.0, t)) * rect.width()

    def _value_of(self, x: float) -> float:
        rect = self._plot_rect()
        hist = self._hist
        if hist is None:
            return 0.0
        t = max(0.0, min(1.0, (x - rect.left()) / max(rect.width(), 1.0)))
        return hist.minimum + t * (hist.maximum - hist.minimum)

    def paintEvent(self, event) -> None:  # noqa: N802, ANN001
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = self._plot_rect()
        painter.fillRect(rect, QColor("#26282c"))
        hist = self._hist
        if hist is None or hist.counts.sum() == 0:
            painter.setPen(QColor("#80868b"))
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "no image")
            return
        counts = np.log1p(hist.counts.astype(np.float64))
        top = counts.max() or 1.0
        path = QPainterPath(QPointF(rect.left(), rect.bottom()))
        n = len(counts)
        for i, c in enumerate(counts):
            x = rect.left() + (i + 0.5) / n * rect.width()
            path.lineTo(QPointF(x, rect.bottom() - c / top * rect.height()))
        path.lineTo(QPointF(rect.right(), rect.bottom()))
        path.closeSubpath()
        painter.fillPath(path, QColor("#8ab4f8"))
        xb, xw = self._x_of(self._black), self._x_of(self._white)
        # Ramp from the black to the white point under the curve: what the levels do.
        painter.setPen(QPen(QColor("#fdd663"), 1.2))
        painter.drawLine(QPointF(xb, rect.bottom()), QPointF(xw, rect.top()))
        for x, color in ((xb, QColor("#e8eaed")), (xw, QColor("#e8eaed"))):
            painter.setPen(QPen(color, 2))
            painter.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom() + 4))
            painter.setBrush(color)
            painter.drawPolygon([QPointF(x - 5, rect.bottom() + 6), QPointF(x + 5, rect.bottom() + 6), QPointF(x, rect.bottom())])

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._hist is None:
            return
        x = event.position().x()
        xb, xw = self._x_of(self._black), self._x_of(self._white)
        self._dragging = "black" if abs(x - xb) <= abs(x - xw) else "white"
        self._drag_to(x)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._dragging is not None:
            self._drag_to(event.position().x())

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self._dragging = None

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self.levels_reset.emit()

    def _drag_to(self, x: float) -> None:
        hist = self._hist
        if hist is None:
            return
        value = self._value_of(x)
        step = (hist.maximum - hist.minimum) / 1000 or 1e-6
        if self._dragging == "black":
            self._black = min(value, self._white - step)
        else:
            self._white = max(value, self._black + step)
        self.update()
        self.levels_changed.emit(self._black, self._white)


class ContrastControl(QWidget):
    """Histogram, the current levels in raw units, and an automatic-levels button."""

    levels_changed = Signal(float, float)  # black, white in raw units

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("contrastControl")
        self.strip = HistogramStrip(self)
        self.label = QLabel("", self)
        self.label.setObjectName("dimLabel")
        self.auto_button = QToolButton(self)
        self.auto_button.setText("Auto")
        self.auto_button.setToolTip("Automatic levels (0.5 and 99.5 percentiles)")
        self.auto_button.clicked.connect(self.reset)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.label, 1)
        row.addWidget(self.auto_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.strip)
        layout.addLayout(row)
        self.strip.levels_changed.connect(self._on_strip_levels_changed)
        self.strip.levels_reset.connect(self.reset)
        self._hist: Histogram | None = None
        self._dtype = ""
        self.setEnabled(False)

    def set_histogram(self, hist: Histogram | None, dtype: str = "") -> None:
        """Show an image's histogram and its automatic levels."""
        self._hist = hist
        self._dtype = dtype
        self.strip.set_histogram(hist)
        self.setEnabled(hist is not None)
        self._update_label()

    @property
    def deep(self) -> bool:
        """Whether the image is deeper than 8 bits."""
        return bool(self._hist is not None and self._hist.deep)

    def levels(self) -> tuple[float, float]:
        """Current (black, white) in raw units."""
        return self.strip.levels()

    def set_levels(self, black: float, white: float) -> None:
        """Set the levels and announce them."""
        self.strip.set_levels(black, white)
        self._update_label()
        self.levels_changed.emit(black, white)

    def reset(self) -> None:
        """Back to the automatic levels."""
        if self._hist is not None:
            self.set_levels(self._hist.auto_black, self._hist.auto_white)

    def _on_strip_levels_changed(self, black: float, white: float) -> None:
        self._update_label()
        self.levels_changed.emit(black, white)

    def _update_label(self) -> None:
        if self._hist is None:
            self.label.setText("Contrast")
            return
        black, white = self.strip.levels()
        depth = f"{self._dtype}, " if self._dtype else ""
        self.label.setText(f"{depth}black {_fmt(black)}  white {_fmt(white)}")
