"""Label changes made elsewhere reach the window on a SQLite library too (the version poll), and the
watcher follows a library switch: the old library's watcher ends, the new one's reports."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

from gui_helpers import TIMEOUT_MS, wait_shown
from PIL import Image

from nmid_desktop.core.config import Settings
from nmid_desktop.core.store import open_library


def test_a_label_set_elsewhere_shows_and_the_watcher_follows_a_library_switch(make_window, library: Path, qtbot,
                                                                                  tmp_path: Path):
    window = make_window(library)
    window.show_image(3)
    wait_shown(qtbot, window)
    old_watch = window.jobs.handle("watch")
    assert old_watch is not None and old_watch.running
    with open_library(library, create=False, user="bob") as bob:  # `nmid label` in bob's shell, say
        bob.set_label(3, "porous", source="expert")
    qtbot.waitUntil(lambda: window.last_colleague == "bob labelled #3 porous", timeout=TIMEOUT_MS)
    assert "porous" in window.page.card.current.text() and window.current.record.label == "porous"

    other = tmp_path / "other-library"
    with open_library(other) as store:
        source = tmp_path / "one.png"
        Image.new("L", (32, 32), 128).save(source)
        new_id, _ = store.add_image(source, sha256=hashlib.sha256(source.read_bytes()).hexdigest(), page=0, n_pages=1,
                                    width=32, height=32, dtype="uint8")
    settings = copy.deepcopy(window.ctx.settings or Settings())
    settings.library = str(other)
    window.apply_settings(settings)
    qtbot.waitUntil(lambda: not old_watch.running, timeout=TIMEOUT_MS)  # the old library's watcher stopped
    qtbot.waitUntil(lambda: window.jobs.handle("watch") is not None, timeout=TIMEOUT_MS)
    new_watch = window.jobs.handle("watch")
    assert new_watch is not old_watch and new_watch.running
    qtbot.waitUntil(lambda: window.ctx.status is not None and window.ctx.status.n_images == 1, timeout=TIMEOUT_MS)
    with open_library(library, create=False, user="bob") as bob:
        bob.set_label(4, "fibres", source="expert")  # the old library: no longer watched
    with open_library(other, create=False, user="bob") as bob:
        bob.set_label(new_id, "particles", source="expert")
    qtbot.waitUntil(lambda: window.last_colleague == f"bob labelled #{new_id} particles", timeout=TIMEOUT_MS)
    qtbot.wait(1500)  # a report from the old library would have arrived by now
    assert window.last_colleague == f"bob labelled #{new_id} particles"
