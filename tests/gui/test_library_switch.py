"""Switching library in Settings: the browser shows the new library's thumbnails, never the old one's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gui_helpers import TIMEOUT_MS
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QDialogButtonBox

from nmid_desktop.core.store import open_library


def _grey(pixmap: QPixmap) -> np.ndarray:
    image = pixmap.toImage().convertToFormat(QImage.Format.Format_Grayscale8)
    data = np.frombuffer(image.constBits(), dtype=np.uint8, count=image.sizeInBytes())
    return data.reshape(image.height(), image.bytesPerLine())[:, : image.width()].copy()


def _click_tab(qtbot, window, widget) -> None:  # noqa: ANN001
    bar = window.tabs.tabBar()
    qtbot.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.tabRect(window.tabs.indexOf(widget)).center())


def test_switching_library_shows_that_librarys_thumbnails(make_window, library: Path, query_images, qtbot, tmp_path):
    from nmid_desktop.core.importer import import_folder
    from nmid_desktop.core.jobs import run_job
    from nmid_desktop.workspace.display import ThumbnailCache

    other = tmp_path / "other-library"
    folder = tmp_path / "other-images"
    folder.mkdir()
    for path in query_images["nanowires"] + query_images["porous"]:
        (folder / path.name).write_bytes(path.read_bytes())
    with open_library(other) as store:
        run_job(import_folder(store, folder))
        first_other = store.get_image(1)
    window = make_window(library)
    browser = window.browser
    _click_tab(qtbot, window, browser)

    def thumb_of(image_id: int) -> np.ndarray | None:
        row = browser.model.row_of(image_id)
        if row is None:
            return None
        browser.model.index(row).data(Qt.ItemDataRole.DecorationRole)  # asks for it when missing
        key = (browser.model.row_data(row).sha256, browser.model.row_data(row).page)
        pixmap = browser.model._pixmaps.get(key)
        return None if pixmap is None else _grey(pixmap)

    qtbot.waitUntil(lambda: thumb_of(1) is not None, timeout=TIMEOUT_MS)
    before = thumb_of(1)

    qtbot.mouseClick(window.toolbar.widgetForAction(window.settings_action), Qt.MouseButton.LeftButton)
    from nmid_desktop.qt.widgets.settings_dialog import SettingsDialog

    qtbot.waitUntil(lambda: window.findChild(SettingsDialog) is not None, timeout=TIMEOUT_MS)
    dialog = window.findChild(SettingsDialog)
    dialog.library_edit.clear()
    qtbot.keyClicks(dialog.library_edit, str(other))
    qtbot.mouseClick(dialog.buttons.button(QDialogButtonBox.StandardButton.Save), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.ctx.library == other, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: browser.model.rowCount() == 4, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: thumb_of(1) is not None, timeout=TIMEOUT_MS)
    expected = ThumbnailCache(tmp_path / "check").get(
        first_other.sha256, first_other.page, browser.model.thumb_size, first_other.path, first_other.crop_box
    )
    after = thumb_of(1)
    assert after is not None and after.shape == expected.shape
    assert np.array_equal(after, expected)
    assert not (before.shape == after.shape and np.array_equal(before, after))
