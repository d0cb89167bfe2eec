"""The window on a shared PostgreSQL library: its location in the title, a colleague's change never undone over."""

from __future__ import annotations

import hashlib
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


# -- a colleague at work, and the server away ---------------------------------------------------------


def _lab(make_window, request, tmp_path: Path, demo_images: Path):  # noqa: ANN001, ANN202
    """A shared library that bob filled with the labelled demo images, and ana's window on it."""
    from nmid_desktop.core.importer import import_folder
    from nmid_desktop.core.jobs import run_job

    lib = make_library("postgresql", tmp_path, request)
    settings = Settings()
    settings.shared_folder = str(lib.shared)
    settings.user = "ana"
    save_settings(settings)  # the browser's own store finds the shared folder and the user too
    with open_library(lib.location, shared_folder=lib.shared, user="bob") as bob:
        run_job(import_folder(bob, demo_images, layout="imagefolder"))
    return lib, make_window(lib.location, settings)


def _bob(lib):  # noqa: ANN001, ANN202
    return open_library(lib.location, create=False, shared_folder=lib.shared, user="bob")


def _near_copy(path: Path, folder: Path) -> Path:
    """Another file of almost the same picture (one pixel changed): other bytes, nearly the same embedding."""
    import numpy as np
    from PIL import Image

    array = np.array(Image.open(path).convert("L"))
    array[0, 0] = 255 - array[0, 0]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"copy-{path.name}"
    Image.fromarray(array).save(target)
    return target


def _browser_row(window, image_id: int):  # noqa: ANN001, ANN202
    model = window.browser.model
    row = model.row_of(image_id)
    return None if row is None else model.row_data(row)


def test_a_colleagues_label_reaches_my_window_and_my_next_query(make_window, request, tmp_path: Path, demo_images,
                                                                 query_images, qtbot):
    lib, window = _lab(make_window, request, tmp_path, demo_images)
    path = query_images["particles"][0]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    image_id = window.current_id
    assert window.current.record.label is None

    # Bob labels the image on ana's screen: her card, the status bar and the browser follow.
    with _bob(lib) as bob:
        bob.set_label(image_id, "fibres", source="expert")
    line = f"bob labelled #{image_id} fibres"
    qtbot.waitUntil(lambda: window.last_colleague == line, timeout=TIMEOUT_MS)
    assert window.status.message_label.toolTip() == line
    card_text = window.page.card.current.text()
    assert "fibres" in card_text and "bob" in card_text
    assert window.current.record.label_version > 0 and window.current.record.label == "fibres"
    window.tabs.setCurrentWidget(window.browser)
    qtbot.waitUntil(lambda: (row := _browser_row(window, image_id)) is not None and (row.label, row.actor) == ("fibres", "bob"),
                    timeout=TIMEOUT_MS)
    model = window.browser.model
    tip = model.data(model.index(model.row_of(image_id)), Qt.ItemDataRole.ToolTipRole)
    assert "set by: expert (bob)" in tip

    # Bob accepts a new image: it is in ana's exact buffer without a rebuild, a demonstration for her next drop.
    other = query_images["nanowires"][0]
    copy = _near_copy(other, tmp_path / "bob-files")
    with _bob(lib) as bob:
        copied, _ = bob.add_image(copy, sha256=hashlib.sha256(copy.read_bytes()).hexdigest(), page=0,
                                  n_pages=1, width=128, height=128, dtype="uint8")
        bob.set_label(copied, "porous", source="expert")  # a deliberately odd label: only bob's image carries it nearby
    searcher = window._engine_ref.engine.classifier.searcher
    qtbot.waitUntil(lambda: searcher.has(copied), timeout=TIMEOUT_MS)
    assert searcher.index is None or copied not in searcher.index  # the buffer took it, not a rebuilt index
    drop_files(window, [other])
    wait_shown(qtbot, window, other.name)
    tiles = window.page.demos.tiles
    assert tiles and tiles[0].tile.image_id == copied and tiles[0].tile.label == "porous"
    assert len(tiles) == 1 or tiles[0].tile.similarity >= tiles[1].tile.similarity


def test_server_away_keeps_browsing_refuses_labels_and_catches_up(make_window, request, tmp_path: Path, demo_images,
                                                                    query_images, qtbot):
    lib, window = _lab(make_window, request, tmp_path, demo_images)
    server = request.getfixturevalue("pg_server")  # the session's server: stopped and started again here
    browser = window.browser
    window.tabs.setCurrentWidget(browser)
    qtbot.waitUntil(lambda: len(browser.model.rows()) == 30, timeout=TIMEOUT_MS)
    rows = browser.model.rows()
    with _bob(lib) as bob:
        before = {r.image_id: bob.get_image(r.image_id).label for r in rows}

    server.stop(remove=False)
    try:
        qtbot.waitUntil(lambda: window.server_away, timeout=TIMEOUT_MS)
        assert window.status.server.isVisible() and "away" in window.status.server.text()
        # Browsing goes on: click rows; the image is shown from the shared folder, nothing crashes.
        for row in (rows[3], rows[17]):
            window.tabs.setCurrentWidget(browser)
            index = browser.model.index(browser.model.row_of(row.image_id))
            browser.view.scrollTo(index)
            where = browser.view.visualRect(index).center()
            qtbot.mouseClick(browser.view.viewport(), Qt.MouseButton.LeftButton, pos=where)
            qtbot.mouseDClick(browser.view.viewport(), Qt.MouseButton.LeftButton, pos=where)
            qtbot.waitUntil(lambda r=row: window.page.payload is not None and window.page.payload.image_id == r.image_id,
                            timeout=TIMEOUT_MS)
            wait_idle(qtbot, window, ("open", "query"))
            assert window.current_id == row.image_id and len(browser.model.rows()) == 30
        assert row.label in window.page.card.current.text()
        # A label key: a clear message, nothing queued.
        qtbot.keyClick(window, Qt.Key.Key_1)
        qtbot.waitUntil(lambda: window.last_error is not None, timeout=TIMEOUT_MS)
        assert "server is away" in window.last_error and "not saved" in window.last_error
        window.last_error = None
    finally:
        server._start()
    # Back: the watcher reconnects, says so, and catches up with bob's changes.
    with _bob(lib) as bob:
        bob.set_label(rows[5].image_id, "patterned", source="expert")
    qtbot.waitUntil(lambda: not window.server_away, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: window.last_colleague == f"bob labelled #{rows[5].image_id} patterned", timeout=TIMEOUT_MS)
    with _bob(lib) as bob:
        after = {r.image_id: bob.get_image(r.image_id).label for r in rows}
    assert after == {**before, rows[5].image_id: "patterned"}  # the refused key changed nothing, nothing lost
    # Labelling works again.
    window.show_image(rows[17].image_id)
    wait_shown(qtbot, window)
    window.set_label("particles")
    wait_idle(qtbot, window)
    with _bob(lib) as bob:
        assert (bob.get_image(rows[17].image_id).label, bob.get_image(rows[17].image_id).label_actor) == ("particles", "ana")
