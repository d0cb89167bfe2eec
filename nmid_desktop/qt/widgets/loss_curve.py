"""A live training-loss plot drawn with QPainter (no plotting library in the window)."""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

SERIES_COLORS = {"train": QColor("#8ab4f8"), "val": QColor("#f28b82")}


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    # The 1-2-5 step nearest to the raw step (in ratio), so about ``count`` ticks appear.
    step = min((s * power for s in (1, 2, 5, 10)), key=lambda v: abs(math.log(v / raw)))
    first = math.ceil(lo / step) * step
    out = []
    value = first
    while value <= hi + step * 1e-9:
        out.append(round(value, 12))
        value += step
    return out


class LossCurve(QWidget):
    """Per-epoch training and validation loss, axes with ticks, the best epoch marked."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("lossCurve")
        self.setMinimumSize(360, 220)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.series: dict[str, list[tuple[int, float]]] = {"train": [], "val": []}
        self.title = "SimCLR loss (NT-Xent)"

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(520, 300)

    def clear(self) -> None:
        """Remove every point."""
        self.series = {"train": [], "val": []}
        self.update()

    def add_point(self, epoch: int, train_loss: float | None, val_loss: float | None) -> None:
        """Append one epoch's losses (None or non-finite values are skipped)."""
        if train_loss is not None and math.isfinite(train_loss):
            self.series["train"].append((epoch, float(train_loss)))
        if val_loss is not None and math.isfinite(val_loss):
            self.series["val"].append((epoch, float(val_loss)))
        self.update()

    def best_epoch(self) -> int | None:
        """The epoch with the lowest validation loss (training loss when no validation)."""
        points = self.series["val"] or self.series["train"]
        return min(points, key=lambda p: p[1])[0] if points else None

    def paintEvent(self, event) -> None:  # noqa: N802, ANN001
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor("#202124"))
        metrics = painter.fontMetrics()
        left = metrics.horizontalAdvance("0.0000") + 14
        plot = QRectF(self.rect()).adjusted(left, metrics.height() + 14, -16, -(metrics.height() * 2 + 12))
        title_font = QFont(self.font())
        title_font.setBold(True)
        painter.setFont(title_font)
        painter.setPen(QColor("#e8eaed"))
        painter.drawText(QRectF(left, 4, plot.width(), metrics.height() + 6), Qt.AlignmentFlag.AlignLeft, self.title)
        painter.setFont(self.font())
        points = self.series["train"] + self.series["val"]
        painter.setPen(QPen(QColor("#5f6368"), 1))
        painter.drawRect(plot)
        if not points:
            painter.setPen(QColor("#9aa0a6"))
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "The loss appears here epoch by epoch")
            return
        epochs = [p[0] for p in points]
        values = [p[1] for p in points]
        x_lo, x_hi = min(epochs), max(max(epochs), min(epochs) + 1)
        y_lo, y_hi = min(values), max(values)
        pad = (y_hi - y_lo) * 0.08 or max(abs(y_hi) * 0.05, 1e-3)
        y_lo, y_hi = y_lo - pad, y_hi + pad

        def to_point(epoch: float, value: float) -> QPointF:
            x = plot.left() + (epoch - x_lo) / (x_hi - x_lo) * plot.width()
            y = plot.bottom() - (value - y_lo) / (y_hi - y_lo) * plot.height()
            return QPointF(x, y)

        grid = QPen(QColor("#3c4043"), 1, Qt.PenStyle.DotLine)
        for value in _ticks(y_lo, y_hi):
            if not y_lo <= value <= y_hi:
                continue
            y = to_point(x_lo, value).y()
            painter.setPen(grid)
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            painter.setPen(QColor("#9aa0a6"))
            painter.drawText(QRectF(0, y - metrics.height() / 2, left - 6, metrics.height()),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{value:.4g}")
        for value in _ticks(x_lo, x_hi, 8):
            if value != int(value) or not x_lo <= value <= x_hi:
                continue
            x = to_point(value, y_lo).x()
            painter.setPen(QColor("#9aa0a6"))
            painter.drawText(QRectF(x - 20, plot.bottom() + 4, 40, metrics.height()), Qt.AlignmentFlag.AlignCenter, str(int(value)))
        painter.drawText(QRectF(plot.left(), plot.bottom() + metrics.height() + 6, plot.width(), metrics.height()),
                         Qt.AlignmentFlag.AlignCenter, "epoch")

        best = self.best_epoch()
        if best is not None:
            x = to_point(best, y_lo).x()
            painter.setPen(QPen(QColor("#81c995"), 1, Qt.PenStyle.DashLine))
            painter.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))

        legend_x = plot.right() - 150
        for row, (name, color) in enumerate(SERIES_COLORS.items()):
            series = self.series[name]
            if not series:
                continue
            painter.setPen(QPen(color, 2))
            if len(series) > 1:
                path = QPainterPath(to_point(*series[0]))
                for point in series[1:]:
                    path.lineTo(to_point(*point))
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawPath(path)
            painter.setBrush(color)
            for point in series:
                painter.drawEllipse(to_point(*point), 2.5, 2.5)
            y = plot.top() + 10 + row * (metrics.height() + 4)
            painter.drawLine(QPointF(legend_x, y), QPointF(legend_x + 18, y))
            painter.setPen(QColor("#e8eaed"))
            last = series[-1][1]
            label = "training" if name == "train" else "validation"
            painter.drawText(QPointF(legend_x + 24, y + metrics.ascent() / 2 - 1), f"{label} {last:.4f}")
