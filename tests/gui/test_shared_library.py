"""The window on a shared PostgreSQL library: its location in the title, a colleague's change never undone over."""

from __future__ import annotations

from pathlib import Path

from gui_helpers import TIMEOUT_MS, drop_files, wait_idle, wait_shown
from library_fixture import make_library, pg_server  # noqa: F401 (a fixture)
from PySide6.QtCore import Qt

from nmid_desktop.core.config import Settings, save_settings
from nmid_desktop.core.store import open_library


def test_window_on_a_shared_library_refuses_undo_over_a_colleague(make_window, request, tmp_path: Path, query_images, qtbot):
    lib = make_library("postgresql", tmp_path, request)
    settings = Settings()
    settings.shared_folder = str(lib.shared)
    save_settings(settings)  # jobs that open a store of their own find the shared folder too
    window = make_window(lib.location, settings)
    title = window.windowTitle()
    assert window.ctx.status.location.startswith("postgresql://") and window.ctx.status.location in title
    path = query_images["particles"][0]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    image_id = window.current_id
    box = window.page.card.class_box
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    qtbot.keyClicks(box, "particles")
    qtbot.keyClick(box, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    wait_idle(qtbot, window)
    with open_library(lib.location, create=False, shared_folder=lib.shared, user="bob") as bob:
        assert bob.get_image(image_id).label == "particles"
        bob.set_label(image_id, "fibres", source="expert")  # bob overwrites it
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: window.last_conflict is not None, timeout=TIMEOUT_MS)
    assert "bob" in window.last_conflict and "fibres" in window.last_conflict
    with open_library(lib.location, create=False, shared_folder=lib.shared) as store:
        kept = store.get_image(image_id)
    assert (kept.label, kept.label_actor) == ("fibres", "bob")
    qtbot.waitUntil(lambda: "bob" in window.page.card.current.text(), timeout=TIMEOUT_MS)
