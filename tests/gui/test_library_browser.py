"""The library browser: filters, review queues, lazy thumbnails that stay cheap at 20,000 images."""

from __future__ import annotations

import time
from pathlib import Path

from gui_helpers import TIMEOUT_MS, drop_files, wait_idle, wait_shown
from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QListView

from nmid_desktop.qt.models import ImageIdRole, LibraryModel
from nmid_desktop.workspace.browse import BrowserRow
from nmid_desktop.workspace.display import ThumbnailQueue


def _rows(browser) -> list[BrowserRow]:  # noqa: ANN001
    return browser.model.rows()


def test_filters_review_queue_thumbnails_and_open(make_window, library: Path, query_images, qtbot):
    window = make_window(library)
    # Two unlabelled images, each with a local prediction.
    clear, other = query_images["nanowires"][1], query_images["porous"][0]
    drop_files(window, [clear, other])
    wait_shown(qtbot, window, clear.name)
    qtbot.keyClick(window, Qt.Key.Key_PageDown)  # show (and predict) the second one too
    wait_shown(qtbot, window, other.name)
    wait_idle(qtbot, window)

    browser = window.browser
    window.tabs.setCurrentWidget(browser)
    qtbot.waitUntil(lambda: len(_rows(browser)) == 32, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: browser.model.cached_thumbnails >= 20, timeout=TIMEOUT_MS)
    assert browser.count_label.text() == "32 images"

    browser.class_combo.setCurrentIndex(browser.class_combo.findData("fibres"))
    qtbot.waitUntil(lambda: len(_rows(browser)) == 6, timeout=TIMEOUT_MS)
    assert {r.label for r in _rows(browser)} == {"fibres"}

    browser.class_combo.setCurrentIndex(0)
    browser.unlabelled_check.setChecked(True)
    qtbot.waitUntil(lambda: len(_rows(browser)) == 2, timeout=TIMEOUT_MS)
    assert {r.name for r in _rows(browser)} == {clear.name, other.name}

    browser.unlabelled_check.setChecked(False)
    browser.order_combo.setCurrentIndex(browser.order_combo.findData("uncertain"))
    qtbot.waitUntil(lambda: browser.count_label.text() == "2 images to review", timeout=TIMEOUT_MS)
    rows = _rows(browser)
    margins = [float(r.note.split("margin ")[1].split(")")[0]) for r in rows]
    assert margins == sorted(margins)  # most uncertain first

    # Double-click opens the image for labelling.
    index = browser.model.index(1)
    where = browser.view.visualRect(index).center()
    qtbot.mouseClick(browser.view.viewport(), Qt.MouseButton.LeftButton, pos=where)  # a real double-click's first press
    qtbot.mouseDClick(browser.view.viewport(), Qt.MouseButton.LeftButton, pos=where)
    wait_shown(qtbot, window, rows[1].name)
    assert window.tabs.currentWidget() is window.page
    assert window.queue == [r.image_id for r in rows] and window.position == 1  # the list is the queue


def test_twenty_thousand_rows_load_fast_and_request_only_visible_thumbnails(qtbot):
    requests = ThumbnailQueue()
    model = LibraryModel(requests)
    requested: list[int] = []
    model.thumbnails_requested.connect(requested.append)
    rows = [
        BrowserRow(i, f"img_{i:05d}.png", "particles" if i % 3 else None, "import", "accepted", False,
                   f"{i:064x}", 0, Path(f"/nonexistent/{i}.png"), None)
        for i in range(20_000)
    ]
    view = QListView()
    qtbot.addWidget(view)
    view.setViewMode(QListView.ViewMode.IconMode)
    view.setUniformItemSizes(True)
    view.setLayoutMode(QListView.LayoutMode.Batched)
    view.setBatchSize(2000)
    view.setGridSize(QSize(130, 146))
    view.resize(1000, 700)
    view.setModel(model)
    view.show()
    qtbot.waitExposed(view)
    start = time.perf_counter()
    model.set_rows(rows)
    qtbot.waitUntil(lambda: sum(requested) > 0, timeout=10_000)
    seconds = time.perf_counter() - start
    qtbot.wait(300)
    visible = sum(requested)
    assert model.rowCount() == 20_000
    assert 0 < visible < 200, visible  # a screenful, not 20,000
    assert len(requests) == visible
    view.scrollToBottom()
    qtbot.waitUntil(lambda: model.index(19_999).data(ImageIdRole) == 19_999, timeout=5000)
    qtbot.wait(300)
    assert sum(requested) < 400
    print(f"\n20,000 rows shown in {seconds * 1000:.0f} ms; {visible} thumbnails requested for the first screen")
    assert seconds < 5.0
