"""The class box never traps the keyboard; new classes only on purpose; classes renamed, merged, deleted."""

from __future__ import annotations

from pathlib import Path

from gui_helpers import TIMEOUT_MS, drop_files, record, wait_idle, wait_shown
from PySide6.QtCore import Qt

from nmid_desktop.core.store import open_library


def _classes(library: Path) -> dict[str, int]:
    with open_library(library, create=False) as store:
        return {c.name: c.count for c in store.classes()}


def test_class_box_gives_the_label_keys_back(make_window, library: Path, query_images, qtbot):
    window = make_window(library)
    path = query_images["porous"][1]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    image_id = window.current_id
    card = window.page.card
    box = card.class_box
    classes = list(card.classes)

    # Type-ahead + Enter labels, and the box lets go of the keyboard.
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(box.hasFocus, timeout=TIMEOUT_MS)
    qtbot.keyClicks(box, "nanow")
    qtbot.keyClick(box, Qt.Key.Key_Return)
    wait_idle(qtbot, window)
    assert record(library, image_id).label == "nanowires"
    assert box.text() == "" and not box.hasFocus()
    qtbot.keyClick(window, Qt.Key.Key_2)  # a digit after using the box labels, it is not typed
    wait_idle(qtbot, window)
    assert record(library, image_id).label == classes[1] and box.text() == ""

    # Escape leaves the box: the next digit labels again.
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    qtbot.keyClicks(box, "po")
    qtbot.keyClick(box, Qt.Key.Key_Escape)
    assert box.text() == "" and not box.hasFocus()
    qtbot.keyClick(window, Qt.Key.Key_1)
    wait_idle(qtbot, window)
    assert record(library, image_id).label == classes[0]

    # A digit in the empty box is the label key too; after text it is part of a name.
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    qtbot.keyClick(box, Qt.Key.Key_3)
    wait_idle(qtbot, window)
    assert record(library, image_id).label == classes[2] and box.text() == ""
    qtbot.keyClicks(box, "x3")
    assert box.text() == "x3"

    # Ctrl+Z in the box undoes the label, not the box's text.
    qtbot.keyClick(box, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    wait_idle(qtbot, window)
    assert record(library, image_id).label == classes[0]
    assert box.text() == "x3"

    # A click on the image takes the keyboard back from the box.
    qtbot.mouseClick(window.page.viewer.viewport(), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not box.hasFocus(), timeout=TIMEOUT_MS)
    qtbot.keyClick(window, Qt.Key.Key_2)
    wait_idle(qtbot, window)
    assert record(library, image_id).label == classes[1]


def test_new_class_only_on_purpose(make_window, library: Path, query_images, qtbot):
    window = make_window(library)
    path = query_images["fibres"][1]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    image_id = window.current_id
    card = window.page.card
    box = card.class_box
    before = _classes(library)

    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    qtbot.keyClicks(box, "2")  # the old trap: "2" + Enter made a class named "2"
    qtbot.keyClicks(box, "sponge")
    qtbot.keyClick(box, Qt.Key.Key_Return)
    wait_idle(qtbot, window)
    assert _classes(library).keys() == before.keys()  # nothing created by a plain Enter
    assert "not a class yet" in card.hint.text() and card.hint.isVisible()
    assert box.text() == "sponge" and box.hasFocus()
    qtbot.keyClick(box, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    wait_idle(qtbot, window)
    assert record(library, image_id).label == "sponge"
    assert not card.hint.isVisible() and not box.hasFocus()
    qtbot.waitUntil(lambda: "sponge" in card.classes, timeout=TIMEOUT_MS)


def test_classes_renamed_merged_and_deleted_from_the_window(make_window, library: Path, query_images, qtbot):
    window = make_window(library)
    path = query_images["fibres"][1]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    image_id = window.current_id
    card, box = window.page.card, window.page.card.class_box
    for name in ("lonely", "sponge"):  # two new classes on this image; "lonely" ends empty
        qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
        qtbot.keyClicks(box, name)
        qtbot.keyClick(box, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
        wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: {"lonely", "sponge"} <= set(card.classes), timeout=TIMEOUT_MS)

    button = window.toolbar.widgetForAction(window.classes_action)
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    from nmid_desktop.qt.widgets.classes_dialog import ClassesDialog

    qtbot.waitUntil(lambda: window.findChild(ClassesDialog, "classesDialog") is not None, timeout=TIMEOUT_MS)
    dialog = window.findChild(ClassesDialog, "classesDialog")
    qtbot.waitExposed(dialog)

    def select(name: str) -> None:
        items = dialog.list.findItems(name, Qt.MatchFlag.MatchStartsWith)
        assert items, f"{name} not listed"
        qtbot.mouseClick(dialog.list.viewport(), Qt.MouseButton.LeftButton, pos=dialog.list.visualItemRect(items[0]).center())
        assert dialog.selected() == name

    select("sponge")
    qtbot.keyClicks(dialog.name_edit, "sponge-like")
    qtbot.mouseClick(dialog.rename_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "Renamed" in dialog.message.text(), timeout=TIMEOUT_MS)
    assert record(library, image_id).label == "sponge-like"
    qtbot.waitUntil(lambda: "sponge-like" in card.classes, timeout=TIMEOUT_MS)

    qtbot.waitUntil(lambda: bool(dialog.list.findItems("sponge-like", Qt.MatchFlag.MatchStartsWith)), timeout=TIMEOUT_MS)
    select("sponge-like")
    qtbot.keyClicks(dialog.name_edit, "porous")
    qtbot.mouseClick(dialog.merge_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "Merged" in dialog.message.text(), timeout=TIMEOUT_MS)
    assert record(library, image_id).label == "porous"
    assert "sponge-like" not in _classes(library)

    qtbot.waitUntil(lambda: "sponge-like" not in card.classes, timeout=TIMEOUT_MS)
    select("porous")
    assert not dialog.delete_button.isEnabled()  # porous labels images
    select("lonely")
    assert dialog.delete_button.isEnabled()
    qtbot.mouseClick(dialog.delete_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "Deleted" in dialog.message.text(), timeout=TIMEOUT_MS)
    assert "lonely" not in _classes(library)
    qtbot.waitUntil(lambda: "lonely" not in card.classes, timeout=TIMEOUT_MS)
    dialog.close()
