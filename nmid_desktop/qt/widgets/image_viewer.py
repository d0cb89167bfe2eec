"""The micrograph view: zoom and pan, display levels, the data bar crop and a scale bar."""

from __future__ import annotations

import math

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
    QWheelEvent,
)
from PySide6.QtWidgets import QFrame, QGraphicsPixmapItem, QGraphicsScene, QGraphicsView, QWidget

from nmid_desktop.qt.imaging import format_length, gray_qimage, nice_length, window_lut

MIN_ZOOM = 0.02
MAX_ZOOM = 64.0


class ImageViewer(QGraphicsView):
    """Shows one micrograph. Wheel zooms at the cursor, drag pans, double-click fits.

    The crop box (the micrograph proper) is outlined and the excluded data bar
    is shaded, so the expert sees what the encoder and the model are shown.
    """

    cursor_moved = Signal(int, int)  # image pixel under the cursor (-1, -1 outside)
    zoom_changed = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("imageViewer")
        self._scene = QGraphicsScene(self)
        self.setScene(self._scene)
        self._item = QGraphicsPixmapItem()
        self._item.setTransformationMode(Qt.TransformationMode.FastTransformation)
        self._scene.addItem(self._item)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setBackgroundBrush(QColor("#1e1f22"))
        self.setMouseTracking(True)
        self.setMinimumSize(320, 240)
        self._view8: np.ndarray | None = None
        self._lut: list[int] | None = None
        self._crop_box: tuple[int, int, int, int] | None = None
        self._pixel_size_m: float | None = None
        self._show_crop = True
        self._fit_mode = True
        self.empty_text = "Drop micrographs or a folder here\nor press Ctrl+O to open, Ctrl+V to paste"
        self.setAcceptDrops(False)  # the main window takes drops anywhere

    # -- content -----------------------------------------------------------------------
    @property
    def has_image(self) -> bool:
        """Whether an image is shown."""
        return self._view8 is not None

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the shown image, (0, 0) when empty."""
        if self._view8 is None:
            return (0, 0)
        return int(self._view8.shape[1]), int(self._view8.shape[0])

    def set_image(
        self,
        view8: np.ndarray,
        crop_box: tuple[int, int, int, int] | None = None,
        pixel_size_m: float | None = None,
    ) -> None:
        """Show a new image (2-D uint8), fitted to the view, with linear display levels."""
        self._view8 = view8
        self._lut = None
        self._crop_box = crop_box
        self._pixel_size_m = pixel_size_m
        self._refresh_pixmap()
        self._scene.setSceneRect(QRectF(0, 0, view8.shape[1], view8.shape[0]))
        self._fit_mode = True
        self.fit()

    def replace_view(self, view8: np.ndarray) -> None:
        """Swap the pixels (e.g. after a new contrast stretch) keeping zoom and position."""
        if self._view8 is None or view8.shape != self._view8.shape:
            self.set_image(view8, self._crop_box, self._pixel_size_m)
            return
        self._view8 = view8
        self._refresh_pixmap()

    def set_levels(self, black: float, white: float, gamma: float = 1.0) -> None:
        """Display levels on the 8-bit view (a colour table: no pixel is recomputed)."""
        if black <= 0 and white >= 255 and gamma == 1.0:
            self._lut = None
        else:
            self._lut = window_lut(black, white, gamma)
        self._refresh_pixmap()

    def set_crop_box(self, crop_box: tuple[int, int, int, int] | None) -> None:
        """Change the outlined micrograph region."""
        self._crop_box = crop_box
        self.viewport().update()

    def set_show_crop(self, show: bool) -> None:
        """Show or hide the crop overlay."""
        self._show_crop = show
        self.viewport().update()

    def clear(self) -> None:
        """Show nothing (the empty-state hint)."""
        self._view8 = None
        self._crop_box = None
        self._pixel_size_m = None
        self._item.setPixmap(QPixmap())
        self._scene.setSceneRect(QRectF())
        self.resetTransform()
        self.viewport().update()

    def _refresh_pixmap(self) -> None:
        if self._view8 is None:
            return
        self._item.setPixmap(QPixmap.fromImage(gray_qimage(self._view8, self._lut)))
        self.viewport().update()

    # -- zoom ----------------------------------------------------------------------------
    @property
    def zoom(self) -> float:
        """Screen pixels per image pixel."""
        return float(self.transform().m11())

    def fit(self) -> None:
        """Fit the whole image in the view."""
        if self._view8 is None:
            return
        self.fitInView(self._scene.sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)
        self._fit_mode = True
        self.zoom_changed.emit(self.zoom)

    def set_zoom(self, factor: float) -> None:
        """Set screen pixels per image pixel (1.0 = 100 %)."""
        if self._view8 is None:
            return
        factor = min(MAX_ZOOM, max(MIN_ZOOM, factor))
        self.setTransform(self.transform().fromScale(factor, factor))
        self._fit_mode = False
        self.zoom_changed.emit(self.zoom)

    def zoom_by(self, step: float) -> None:
        """Multiply the zoom by ``step`` (anchored under the mouse)."""
        if self._view8 is None:
            return
        target = min(MAX_ZOOM, max(MIN_ZOOM, self.zoom * step))
        factor = target / max(self.zoom, 1e-9)
        self.scale(factor, factor)
        self._fit_mode = False
        self.zoom_changed.emit(self.zoom)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        if self._view8 is None:
            return
        steps = event.angleDelta().y() / 120.0
        self.zoom_by(math.pow(1.25, steps))

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self.fit()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        key = event.key()
        if key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_by(1.25)
        elif key == Qt.Key.Key_Minus:
            self.zoom_by(0.8)
        elif key == Qt.Key.Key_0:
            self.fit()
        else:
            super().keyPressEvent(event)

    def resizeEvent(self, event) -> None:  # noqa: N802, ANN001
        super().resizeEvent(event)
        if self._fit_mode:
            self.fit()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        super().mouseMoveEvent(event)
        if self._view8 is None:
            return
        pos = self.mapToScene(event.position().toPoint())
        x, y = int(math.floor(pos.x())), int(math.floor(pos.y()))
        height, width = self._view8.shape
        if 0 <= x < width and 0 <= y < height:
            self.cursor_moved.emit(x, y)
        else:
            self.cursor_moved.emit(-1, -1)

    # -- overlays --------------------------------------------------------------------------
    def drawBackground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802
        super().drawBackground(painter, rect)
        if self._view8 is not None:
            return
        painter.save()
        painter.resetTransform()
        area = QRectF(self.viewport().rect()).adjusted(24, 24, -24, -24)
        pen = QPen(QColor("#5f6368"), 2, Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.drawRoundedRect(area, 14, 14)
        painter.setPen(QColor("#bdc1c6"))
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.25)
        painter.setFont(font)
        painter.drawText(area, Qt.AlignmentFlag.AlignCenter, self.empty_text)
        painter.restore()

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802
        if self._view8 is None:
            return
        height, width = self._view8.shape
        if self._show_crop and self._crop_box is not None and tuple(self._crop_box) != (0, 0, width, height):
            x0, y0, x1, y1 = self._crop_box
            outside = QPainterPath()
            outside.addRect(QRectF(0, 0, width, height))
            inside = QPainterPath()
            inside.addRect(QRectF(x0, y0, x1 - x0, y1 - y0))
            painter.save()
            painter.fillPath(outside.subtracted(inside), QBrush(QColor(255, 140, 0, 70), Qt.BrushStyle.SolidPattern))
            pen = QPen(QColor("#ff9800"), 0)  # cosmetic: one screen pixel at any zoom
            pen.setCosmetic(True)
            pen.setWidthF(1.5)
            pen.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(pen)
            painter.drawRect(QRectF(x0, y0, x1 - x0, y1 - y0))
            painter.restore()
            self._draw_label(painter, QPointF(x0 + 4 / max(self.zoom, 1e-6), y1), "data bar excluded")
        if self._pixel_size_m:
            self._draw_scale_bar(painter)

    def _draw_label(self, painter: QPainter, scene_pos: QPointF, text: str) -> None:
        painter.save()
        view_pos = self.mapFromScene(scene_pos)
        painter.resetTransform()
        metrics = painter.fontMetrics()
        box = QRectF(view_pos.x(), view_pos.y() + 3, metrics.horizontalAdvance(text) + 10, metrics.height() + 4)
        if box.bottom() > self.viewport().height():
            box.moveBottom(view_pos.y() - 3)
        painter.fillRect(box, QColor(0, 0, 0, 150))
        painter.setPen(QColor("#ffb74d"))
        painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
        painter.restore()

    def _draw_scale_bar(self, painter: QPainter) -> None:
        """A scale bar about a fifth of the view wide, from the file's pixel size."""
        zoom = self.zoom
        if zoom <= 0 or not self._pixel_size_m:
            return
        target_px = self.viewport().width() / 5
        metres = nice_length(target_px / zoom * self._pixel_size_m)
        if metres <= 0:
            return
        bar_px = metres / self._pixel_size_m * zoom
        painter.save()
        painter.resetTransform()
        margin = 16
        x1 = self.viewport().width() - margin
        y = self.viewport().height() - margin
        x0 = x1 - bar_px
        text = format_length(metres)
        metrics = painter.fontMetrics()
        back = QRectF(x0 - 8, y - metrics.height() - 14, bar_px + 16, metrics.height() + 22)
        painter.fillRect(back, QColor(0, 0, 0, 150))
        painter.fillRect(QRectF(x0, y - 5, bar_px, 5), QColor("white"))
        painter.setPen(QColor("white"))
        painter.drawText(QRectF(x0, y - metrics.height() - 9, bar_px, metrics.height()), Qt.AlignmentFlag.AlignCenter, text)
        painter.restore()
