"""16-bit contrast, paste, export, and closing the window while work runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from gui_helpers import TIMEOUT_MS, drop_files, wait_shown
from PySide6.QtCore import QMimeData
from PySide6.QtGui import QGuiApplication, QImage

from nmid_desktop.workspace.display import rescale


def test_sixteen_bit_contrast_restretches_from_raw(make_window, library: Path, qtbot, tmp_path):
    rng = np.random.default_rng(3)
    raw = (rng.normal(20000, 3000, (96, 128)).clip(0, 65535)).astype(np.uint16)
    raw[40:60, 50:80] = 60000  # a bright feature far above the bulk
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, raw)
    window = make_window(library)
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    payload = window.page.payload
    assert payload.dtype == "uint16" and payload.histogram.deep
    assert payload.raw_grey is not None and payload.raw_grey.dtype == np.uint16
    contrast = window.page.contrast
    assert contrast.isEnabled() and "uint16" in contrast.label.text()
    before = window.page.viewer._view8.copy()
    contrast.set_levels(40000.0, 60000.0)  # show the bright feature, not the bulk
    expected = rescale(raw, 40000.0, 60000.0)
    qtbot.waitUntil(lambda: np.array_equal(window.page.viewer._view8, expected), timeout=TIMEOUT_MS)
    assert not np.array_equal(before, expected)
    assert window.page.viewer._view8[50, 60] == 255 and window.page.viewer._view8[0, 0] == 0


def test_paste_an_image_from_the_clipboard(make_window, library: Path, qtbot):
    window = make_window(library)
    rng = np.random.default_rng(5)
    array = rng.integers(0, 255, (80, 100), dtype=np.uint8)
    image = QImage(array.data, 100, 80, 100, QImage.Format.Format_Grayscale8).copy()
    mime = QMimeData()
    mime.setImageData(image)
    QGuiApplication.clipboard().setMimeData(mime)
    try:
        window.paste_action.trigger()
        qtbot.waitUntil(lambda: window.current is not None, timeout=TIMEOUT_MS)
        assert window.current.record.original_name.startswith("pasted-")
        assert window.page.viewer.image_size == (100, 80)
    finally:
        # The clipboard now owns a QMimeData made in Python; left there, QtGui's exit-time
        # cleanup destroys it after the interpreter is gone and the process segfaults.
        QGuiApplication.clipboard().clear()


def test_export_dialog_writes_a_split_dataset(make_window, library: Path, qtbot, tmp_path):
    window = make_window(library)
    dialog = window._on_export_triggered()
    out = tmp_path / "export"
    dialog.folder_edit.setText(str(out))
    handle = dialog.start()
    with qtbot.waitSignal(handle.finished, timeout=TIMEOUT_MS):
        pass
    assert dialog.report.n_images == 30
    assert {p.name for p in out.iterdir() if p.is_dir()} >= {"train", "val", "test"}
    assert "exported 30 images" in dialog.output.toPlainText()
    dialog.reject()


def test_closing_cancels_and_waits_for_running_work(make_window, library: Path, demo_images: Path, qtbot):
    window = make_window(library)
    window.training.epochs.setValue(50)
    window.training.batch.setValue(4)
    window.training.device = "cpu"
    training = window.training.start()
    batch = window.batch.start(demo_images)
    qtbot.waitUntil(lambda: training.last_progress is not None, timeout=TIMEOUT_MS)
    assert window.jobs.thread_count() >= 3  # engine lane, browser lane, training, batch...
    window.close()
    assert window.jobs.thread_count() == 0
    assert training.outcome == "cancelled" and batch.outcome in ("cancelled", "finished")


def test_the_status_bar_names_the_device_and_the_engine(make_window, library: Path, query_images, qtbot):
    window = make_window(library)
    drop_files(window, [query_images["particles"][0]])
    wait_shown(qtbot, window)
    qtbot.waitUntil(lambda: "·" in window.status.device.text(), timeout=TIMEOUT_MS)
    encoder = window._engine_ref.engine.classifier.encoder
    expected = {"onnxruntime": "ONNX Runtime", "torch": "PyTorch"}[encoder.engine]
    assert window.status.device.text() == f"Device: {str(encoder.device).upper()} · {expected}"
    assert window.status.device.toolTip() == encoder.runtime
