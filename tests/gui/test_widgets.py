"""Widgets on their own: the viewer's zoom, levels and crop overlay; the loss curve; the contrast strip."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QImage, QWheelEvent
from PySide6.QtWidgets import QApplication

from nmid_desktop.qt.imaging import format_length, nice_length, window_lut
from nmid_desktop.qt.widgets.contrast import ContrastControl
from nmid_desktop.qt.widgets.image_viewer import ImageViewer
from nmid_desktop.qt.widgets.loss_curve import LossCurve, _ticks
from nmid_desktop.workspace.display import histogram, make_thumbnail, rescale


def test_viewer_zoom_pan_levels_and_crop(qtbot):
    viewer = ImageViewer()
    qtbot.addWidget(viewer)
    viewer.resize(400, 300)
    viewer.show()
    qtbot.waitExposed(viewer)
    image = np.tile(np.arange(256, dtype=np.uint8), (200, 1))
    viewer.set_image(image, crop_box=(0, 0, 256, 170), pixel_size_m=5e-9)
    assert viewer.image_size == (256, 200)
    fitted = viewer.zoom
    assert 0.9 < fitted * 200 / viewer.viewport().height() < 1.1 or 0.9 < fitted * 256 / viewer.viewport().width() < 1.1
    wheel = QWheelEvent(QPointF(100, 100), viewer.mapToGlobal(QPointF(100, 100)), QPoint(0, 0), QPoint(0, 240),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(viewer.viewport(), wheel)
    assert abs(viewer.zoom / fitted - 1.25**2) < 1e-6
    viewer.set_zoom(4.0)
    assert viewer.zoom == 4.0 and viewer.horizontalScrollBar().maximum() > 0  # pannable
    qtbot.keyClick(viewer, Qt.Key.Key_0)
    assert abs(viewer.zoom - fitted) < 1e-9
    # Levels are a colour table: level 100 shows black, 150 white, no pixel recomputed.
    viewer.set_levels(100, 150)
    shown = viewer._item.pixmap().toImage().convertToFormat(QImage.Format.Format_Grayscale8)
    assert shown.pixelColor(90, 10).value() == 0 and shown.pixelColor(160, 10).value() == 255
    grab = viewer.grab().toImage()
    # The data bar (rows 170-199) is shaded orange: its colour is no longer grey there.
    y = int(viewer.mapFromScene(QPointF(10, 190)).y())
    x = int(viewer.mapFromScene(QPointF(10, 190)).x())
    pixel = grab.pixelColor(x, y)
    assert pixel.red() > pixel.blue() + 20
    viewer.clear()
    assert not viewer.has_image


def test_helpers_for_display():
    lut = window_lut(10, 20)
    assert lut[10] & 0xFF == 0 and lut[20] & 0xFF == 255 and len(lut) == 256
    assert nice_length(3.7e-7) == 2e-7 and format_length(2e-7) == "200 nm"
    raw = np.array([[0, 1000], [2000, 65535]], dtype=np.uint16)
    assert rescale(raw, 1000, 2000).tolist() == [[0, 0], [255, 255]]
    hist = histogram(np.zeros((4, 4), np.uint8), raw.astype(np.float64))
    assert hist.deep and hist.minimum == 0 and hist.maximum == 65535 and hist.counts.sum() == 4
    thumb = make_thumbnail(np.zeros((300, 400), np.uint8), (0, 0, 400, 250), 100)
    assert thumb.shape == (62, 100) or thumb.shape == (63, 100)


def test_contrast_control_emits_levels(qtbot):
    control = ContrastControl()
    qtbot.addWidget(control)
    raw = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    control.set_histogram(histogram(np.zeros((64, 64), np.uint8), raw), "uint16")
    assert control.deep and control.isEnabled()
    with qtbot.waitSignal(control.levels_changed) as blocker:
        control.set_levels(100.0, 900.0)
    assert blocker.args == [100.0, 900.0]
    with qtbot.waitSignal(control.levels_changed):
        control.reset()
    black, white = control.levels()
    assert 0 < black < 100 and 4000 < white < 4095  # the 0.5 and 99.5 percentiles


def test_loss_curve_tracks_epochs(qtbot):
    curve = LossCurve()
    qtbot.addWidget(curve)
    for epoch, (train, val) in enumerate([(5.0, 4.0), (4.0, 3.5), (3.5, 3.6)], start=1):
        curve.add_point(epoch, train, val)
    curve.add_point(4, float("nan"), None)  # a non-finite loss is not drawn
    assert len(curve.series["train"]) == 3 and curve.best_epoch() == 2
    curve.resize(500, 300)
    image = curve.grab().toImage()
    assert not image.isNull()
    assert _ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
