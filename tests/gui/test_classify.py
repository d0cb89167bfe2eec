"""The main job: drop images, see demonstrations and a prediction, accept or correct by key, undo and redo."""

from __future__ import annotations

from pathlib import Path

from gui_helpers import count_images, drop_files, record, wait_idle, wait_shown
from PySide6.QtCore import Qt


def test_drop_shows_image_demonstrations_and_prediction(make_window, library: Path, query_images, qtbot):
    window = make_window(library)
    before = count_images(library)
    path = query_images["nanowires"][0]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    result = window.current
    assert count_images(library) == before + 1  # a dropped file outside the library is imported first
    assert window.page.viewer.has_image and window.page.viewer.image_size == (128, 128)
    assert len(result.tiles) == 5 and len(window.page.demos.tiles) == 5
    assert all(t.label and t.source == "import" and t.thumb is not None for t in result.tiles)
    sims = [t.similarity for t in result.tiles]
    assert sims == sorted(sims, reverse=True)
    assert result.ranking[0][0] == "nanowires"  # the demo classes are easy for ImageNet features
    assert window.page.card.suggested == "nanowires"
    assert window.page.card.accept_button.isEnabled()
    assert "nanowires" in window.page.card.local_summary.text()
    assert window.last_drop_latency_s is not None


def test_drop_many_files_and_a_folder_walks_through_them(make_window, library: Path, query_images, qtbot, tmp_path):
    window = make_window(library)
    files = [query_images["particles"][0], query_images["porous"][0], query_images["fibres"][0]]
    drop_files(window, files)
    wait_shown(qtbot, window, files[0].name)
    assert len(window.queue) == 3 and window.position == 0
    assert window.page.queue_label.text() == "1 of 3"
    qtbot.keyClick(window, Qt.Key.Key_PageDown)
    wait_shown(qtbot, window, files[1].name)
    folder = tmp_path / "dropped"
    folder.mkdir()
    for path in query_images["patterned"]:
        (folder / path.name).write_bytes(path.read_bytes())
    drop_files(window, [folder])
    wait_idle(qtbot, window)
    wait_shown(qtbot, window)
    assert len(window.queue) == 2
    assert window.current.record.original_name in {p.name for p in query_images["patterned"]}


def test_accept_correct_undo_redo_by_keys(make_window, library: Path, query_images, qtbot):
    window = make_window(library)
    first, second = query_images["particles"]
    drop_files(window, [first])
    wait_shown(qtbot, window, first.name)
    image_id = window.current_id
    suggested = window.page.card.suggested
    assert suggested == "particles"

    qtbot.keyClick(window, Qt.Key.Key_Return)  # accept
    wait_idle(qtbot, window)
    accepted = record(library, image_id)
    assert (accepted.label, accepted.review, accepted.label_source) == ("particles", "accepted", "local")

    # The accepted image is a demonstration for the very next query.
    drop_files(window, [second])
    wait_shown(qtbot, window, second.name)
    assert image_id in [t.image_id for t in window.current.tiles]
    assert next(t for t in window.current.tiles if t.image_id == image_id).source == "local"

    # Correct with a number key: 1-9 pick the first classes of the taxonomy.
    second_id = window.current_id
    classes = window.page.card.classes
    qtbot.keyClick(window, Qt.Key.Key_2)
    wait_idle(qtbot, window)
    assert record(library, second_id).label == classes[1]
    assert record(library, second_id).label_source == "expert"

    # Undo twice (the correction, then the accept of the first image), redo once.
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    wait_idle(qtbot, window)
    assert record(library, second_id).label is None
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    wait_idle(qtbot, window)
    assert record(library, image_id).label is None
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    wait_idle(qtbot, window)
    assert record(library, image_id).label == "particles"
    assert record(library, second_id).label is None


def test_type_ahead_box_and_demonstration_label_click(make_window, library: Path, query_images, qtbot):
    window = make_window(library)
    path = query_images["porous"][1]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    image_id = window.current_id
    box = window.page.card.class_box
    box.setFocus()
    qtbot.keyClicks(box, "nanow")
    qtbot.keyClick(box, Qt.Key.Key_Return)
    wait_idle(qtbot, window)
    assert record(library, image_id).label == "nanowires"
    assert box.text() == ""

    # Digits typed after text in the box are text, not labels.
    box.setFocus()
    qtbot.keyClicks(box, "a3")
    assert box.text() == "a3"
    qtbot.keyClick(box, Qt.Key.Key_Escape)

    tile = window.page.demos.tiles[0]
    qtbot.mouseClick(tile.label_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    assert record(library, image_id).label == tile.tile.label

    # A new class name typed in the box is created with Ctrl+Enter.
    box.setFocus()
    qtbot.keyClicks(box, "sponge-like")
    qtbot.keyClick(box, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    wait_idle(qtbot, window)
    assert record(library, image_id).label == "sponge-like"
    qtbot.waitUntil(lambda: "sponge-like" in window.page.card.classes, timeout=30_000)


def test_first_run_on_an_empty_library(make_window, tmp_path: Path, query_images, qtbot):
    library = tmp_path / "new-library"
    window = make_window(library)
    assert window.ctx.status.n_images == 0 and not window.page.viewer.has_image
    path = query_images["fibres"][0]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    assert window.current.tiles == () and window.current.ranking == ()
    assert "No labelled images" in window.page.demos._message.text()
    assert window.page.card.suggested is None and not window.page.card.accept_button.isEnabled()
    qtbot.keyClick(window, Qt.Key.Key_Return)  # nothing to accept: a hint, no label
    wait_idle(qtbot, window)
    assert record(library, window.current_id).label is None
    box = window.page.card.class_box
    box.setFocus()
    qtbot.keyClicks(box, "fibres")
    qtbot.keyClick(box, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    wait_idle(qtbot, window)
    assert record(library, window.current_id).label == "fibres"
    qtbot.waitUntil(lambda: window.page.card.classes == ["fibres"], timeout=30_000)
