"""Batch with cancel, and the GUI thread's responsiveness while batch, index rebuild and training run."""

from __future__ import annotations

from pathlib import Path

import pytest
from gui_helpers import TIMEOUT_MS, record

from nmid_desktop.core.demo import generate_demo
from nmid_desktop.core.jobs import run_job
from nmid_desktop.workspace.batch import BatchRow


@pytest.fixture(scope="module")
def batch_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("batch")
    run_job(generate_demo(folder, per_class=4, seed=7, size=128))
    return folder


def test_batch_classifies_a_folder_and_writes_pending_labels(make_window, library: Path, query_images, qtbot, tmp_path):
    window = make_window(library)
    folder = tmp_path / "few"
    folder.mkdir()
    for label in ("particles", "fibres"):
        path = query_images[label][0]
        (folder / path.name).write_bytes(path.read_bytes())
    window.tabs.setCurrentWidget(window.batch)
    handle = window.batch.start(folder)
    with qtbot.waitSignal(handle.finished, timeout=TIMEOUT_MS):
        pass
    rows = window.batch.model.rows()
    assert len(rows) == 2
    assert {r.local for r in rows} == {"particles", "fibres"}
    for row in rows:
        stored = record(library, row.image_id)
        assert stored.label == row.local and stored.review == "pending" and stored.label_source == "local"
    assert "2 images classified" in window.batch.message.text()


def test_batch_cancel_keeps_finished_results(make_window, library: Path, batch_folder: Path, qtbot):
    window = make_window(library)
    rows: list[BatchRow] = []
    handle = window.batch.start(batch_folder)
    handle.progress_changed.connect(lambda p: rows.append(p.data) if isinstance(p.data, BatchRow) else None)
    qtbot.waitUntil(lambda: len(rows) >= 1, timeout=TIMEOUT_MS)
    window.batch.cancel_button.click()
    with qtbot.waitSignal(handle.ended, timeout=TIMEOUT_MS):
        pass
    assert handle.outcome == "cancelled"
    assert 1 <= window.batch.model.rowCount() < 20
    assert "Cancelled" in window.batch.message.text()
    assert window.batch.start_button.isEnabled() and not window.batch.cancel_button.isEnabled()
    # Cancelled before the label step: nothing was labelled, the predictions made are stored.
    assert record(library, rows[0].image_id).label is None


def test_batch_rebuild_and_training_run_off_the_gui_thread(make_window, library: Path, batch_folder: Path, qtbot):
    """Embedding, index work and training raise on the GUI thread (core.jobs.ensure_worker_thread), so
    all three finishing while the window is open shows none of it ran there. How long the GUI thread
    stalls meanwhile is a figure, measured by ``benchmarks/gui_stall.py``."""
    from nmid_desktop.core.jobs import ensure_worker_thread

    window = make_window(library)
    with pytest.raises(RuntimeError, match="GUI thread"):
        ensure_worker_thread("embedding")  # the guard is armed while the window is open
    batch = window.batch.start(batch_folder)
    rebuild = window.rebuild_index()
    window.training.epochs.setValue(2)
    window.training.batch.setValue(8)
    window.training.use_check.setChecked(False)
    window.training.max_images = 30
    window.training.device = "cpu"
    training = window.training.start()
    handles = [batch, rebuild, training]
    # Keep the GUI busy the way a user would: switch tabs and repaint while the work goes on.
    tabs = [window.batch, window.training, window.page, window.browser]
    step = {"i": 0}

    def poke() -> bool:
        step["i"] += 1
        window.tabs.setCurrentWidget(tabs[step["i"] % len(tabs)])
        return all(not h.running for h in handles)

    qtbot.waitUntil(poke, timeout=240_000)
    assert [h.outcome for h in handles] == ["finished"] * 3, [h.error for h in handles]
    assert window.training.curve.series["train"], "the loss curve got no epoch"
    assert window.training.device_label.text() == "CPU"
    assert window.last_error is None


def test_classify_folder_button_and_enter_in_the_field_run_the_batch(make_window, library: Path, query_images, qtbot, tmp_path):
    """As a user does it: type the folder, press the button; then again with Enter in the field."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    window = make_window(library)
    folder = tmp_path / "typed"
    folder.mkdir()
    for label in ("particles", "fibres"):
        path = query_images[label][0]
        (folder / path.name).write_bytes(path.read_bytes())
    panel = window.batch
    window.tabs.setCurrentWidget(panel)
    QTest.keyClicks(panel.folder_edit, str(folder))
    qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    assert panel.handle is not None, panel.message.text()
    qtbot.waitUntil(lambda: not panel.handle.running, timeout=TIMEOUT_MS)
    assert panel.handle.outcome == "finished", panel.message.text()
    assert panel.folder_edit.text() == str(folder)
    assert panel.model.rowCount() == 2 and "2 images classified" in panel.message.text()
    if Path("/work/screens").is_dir():  # the closing note shows this screen
        window.grab().save("/work/screens/batch_tab_after_button_press.png")
    first = panel.handle
    panel.folder_edit.setFocus()
    QTest.keyClick(panel.folder_edit, Qt.Key.Key_Return)
    assert panel.handle is not first
    qtbot.waitUntil(lambda: not panel.handle.running, timeout=TIMEOUT_MS)
    assert panel.handle.outcome == "finished" and panel.model.rowCount() == 2
