"""Stable class keys in the window (issue 13.6): a new class shifts no digit; keys reassigned by clicking."""

from __future__ import annotations

from pathlib import Path

from gui_helpers import TIMEOUT_MS, drop_files, record, wait_idle, wait_shown
from PySide6.QtCore import Qt

from nmid_desktop.core.store import open_library


def _keys(library: Path) -> dict[str, int | None]:
    with open_library(library, create=False) as store:
        return {c.name: c.key for c in store.classes()}


def test_a_new_class_keeps_the_digits_and_the_dialog_reassigns_them(make_window, library: Path, query_images, qtbot):
    before = _keys(library)
    two = next(name for name, key in before.items() if key == 2)
    window = make_window(library)
    path = query_images["porous"][1]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    image_id = window.current_id
    card, box = window.page.card, window.page.card.class_box

    # A class that sorts before all the others: by alphabetical position it would take key 1
    # and push every class one digit on.
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    qtbot.keyClicks(box, "aggregates")
    qtbot.keyClick(box, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: "aggregates" in card.classes, timeout=TIMEOUT_MS)
    after = _keys(library)
    assert {n: k for n, k in after.items() if n != "aggregates"} == before
    assert after["aggregates"] == len(before) + 1  # the lowest free key
    chips = [b.text() for b in card._chips_host.findChildren(type(card.accept_button), "classChip")]
    assert f"{after['aggregates']}  aggregates" in chips and f"2  {two}" in chips

    qtbot.keyClick(window, Qt.Key.Key_2)
    wait_idle(qtbot, window)
    assert record(library, image_id).label == two  # "2" still labels the class it labelled before
    assert sorted(card.classes)[1] != two  # where alphabetical order would have moved it

    # Reassign by clicking: select the new class, click key 2; its holder takes the new class's old key.
    qtbot.mouseClick(window.toolbar.widgetForAction(window.classes_action), Qt.MouseButton.LeftButton)
    from nmid_desktop.qt.widgets.classes_dialog import ClassesDialog

    qtbot.waitUntil(lambda: window.findChild(ClassesDialog, "classesDialog") is not None, timeout=TIMEOUT_MS)
    dialog = window.findChild(ClassesDialog, "classesDialog")
    qtbot.waitExposed(dialog)
    items = dialog.list.findItems("aggregates", Qt.MatchFlag.MatchStartsWith)
    qtbot.mouseClick(dialog.list.viewport(), Qt.MouseButton.LeftButton, pos=dialog.list.visualItemRect(items[0]).center())
    assert dialog.selected() == "aggregates" and dialog.key_buttons[after["aggregates"]].isChecked()
    qtbot.mouseClick(dialog.key_buttons[2], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "Keys:" in dialog.message.text(), timeout=TIMEOUT_MS)
    swapped = _keys(library)
    assert swapped["aggregates"] == 2 and swapped[two] == after["aggregates"]
    qtbot.waitUntil(lambda: card.class_for_key(2) == "aggregates", timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: dialog.key_buttons[2].isChecked(), timeout=TIMEOUT_MS)
    assert "key 2" in dialog.list.findItems("aggregates", Qt.MatchFlag.MatchStartsWith)[0].text()
    dialog.close()
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=TIMEOUT_MS)
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=TIMEOUT_MS)

    qtbot.keyClick(window, Qt.Key.Key_2)
    wait_idle(qtbot, window)
    assert record(library, image_id).label == "aggregates"
