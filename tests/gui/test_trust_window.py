"""Trust in the window: an image unlike the library gets a badge, not a confident label Enter would take."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gui_helpers import drop_files, record, wait_idle, wait_shown
from PIL import Image
from PySide6.QtCore import Qt


def _unlike_the_demo(tmp_path: Path) -> Path:
    """A smooth horizontal grey ramp: nothing like any demo class's texture."""
    ramp = (np.indices((128, 128))[1] * 2).astype(np.uint8)
    path = tmp_path / "unlike.png"
    Image.fromarray(ramp).save(path)
    return path


def test_an_image_unlike_the_library_shows_the_badge_and_enter_does_not_accept(
    make_window, library: Path, query_images, qtbot, tmp_path: Path
):
    window = make_window(library)
    odd = _unlike_the_demo(tmp_path)
    drop_files(window, [odd])
    wait_shown(qtbot, window, odd.name)
    card = window.page.card
    assert window.current.novelty is not None and window.current.novelty.novel and not window.current.trusted
    badge = card.novelty_badge.text()
    assert not card.novelty_badge.isHidden() and "unlike your library: nearest " in badge and ", typical " in badge
    assert "%" not in card.local_summary.text() and "not trusted" in card.local_summary.text()
    assert card.suggested is None and card.untrusted in card.classes and not card.accept_button.isEnabled()
    image_id = window.current_id
    qtbot.keyClick(window, Qt.Key.Key_Return)  # must not file it under the (far) nearest class
    wait_idle(qtbot, window)
    assert record(library, image_id).label is None
    assert "not trusted" in window.status.message_label.text()
    qtbot.keyClick(window, Qt.Key.Key_3)  # the expert's choice still works by key
    qtbot.waitUntil(lambda: record(library, image_id).label == card.classes[2], timeout=30_000)

    known = query_images["porous"][0]
    drop_files(window, [known])
    wait_shown(qtbot, window, known.name)
    assert window.current.trusted and card.novelty_badge.isHidden()  # a known image: today's display
    assert card.suggested == "porous" and "%" in card.local_summary.text() and card.accept_button.isEnabled()


def _plant_wrong_labels(library: Path, n: int) -> dict[int, str]:
    """Relabel one image of each of ``n`` classes as the next class; returns {id: true label}."""
    from nmid_desktop.core.store import ImageFilter, open_library

    planted: dict[int, str] = {}
    with open_library(library, create=False) as store:
        records = list(store.images(ImageFilter(unlabelled=False)))
        classes = sorted({r.label for r in records if r.label})
        for c in range(n):
            victim = next(r for r in records if r.label == classes[c])
            store.set_label(victim.id, classes[(c + 1) % len(classes)], source="import", review="accepted")
            planted[victim.id] = classes[c]
    return planted


def _history(library: Path, image_id: int):  # noqa: ANN202
    from nmid_desktop.core.store import open_library

    with open_library(library, create=False) as store:
        return store.history(image_id)


def test_likely_mislabelled_queue_by_keys_and_clicks_records_each_decision(make_window, library: Path, qtbot):
    planted = _plant_wrong_labels(library, 3)
    window = make_window(library)
    handle = window.find_label_errors()
    window.jobs.cancel("suspects")  # cancel works (the fit has a cancel point before it)
    qtbot.waitUntil(lambda: handle.outcome is not None, timeout=60_000)
    assert handle.outcome == "cancelled" and getattr(window, "label_errors_dialog", None) is None

    window.find_label_errors()
    qtbot.waitUntil(lambda: getattr(window, "label_errors_dialog", None) is not None, timeout=120_000)
    dialog = window.label_errors_dialog
    qtbot.waitExposed(dialog)
    suspects = dialog.suspects
    scores = [s.score for s in suspects]
    assert scores == sorted(scores, reverse=True) and set(planted) <= {s.image_id for s in suspects[:5]}
    assert all(s.thumb is not None for s in suspects) and "SUSPECT 1 OF" in dialog.counter.text()

    first = dialog.current
    qtbot.keyClick(dialog, Qt.Key.Key_Return)  # accept the suggestion
    second = dialog.current
    assert second is not first and "SUSPECT 2 OF" in dialog.counter.text()
    qtbot.keyClick(dialog, Qt.Key.Key_K)  # keep
    third = dialog.current
    other = next(c for c in dialog.classes if c not in (third.label, third.suggested))
    qtbot.keyClick(dialog, getattr(Qt.Key, f"Key_{dialog.classes.index(other) + 1}"))  # another class by digit
    fourth = dialog.current
    if fourth is not None:
        qtbot.mouseClick(dialog.keep_button, Qt.MouseButton.LeftButton)  # and a click keeps
    wait_idle(qtbot, window)

    assert record(library, first.image_id).label == first.suggested
    assert _history(library, first.image_id)[0].kind == "label"
    if first.image_id in planted:
        assert first.suggested == planted[first.image_id]  # the suggestion is the true class
    kept = _history(library, second.image_id)[0]
    assert (kept.kind, kept.new_label, kept.new_review) == ("kept", second.label, "accepted")
    assert record(library, second.image_id).label == second.label
    assert record(library, third.image_id).label == other and _history(library, third.image_id)[0].new_label == other
    if fourth is not None:
        assert _history(library, fourth.image_id)[0].kind == "kept"
    assert [d[1] for d in dialog.decisions][:3] == ["correct", "keep", "correct"]

    dialog.close()
    window.label_errors_dialog = None
    window.find_label_errors()  # a kept label is not asked about again
    qtbot.waitUntil(lambda: window.jobs.running_kinds() == [] or "suspects" not in window.jobs.running_kinds(),
                    timeout=120_000)
    qtbot.waitUntil(lambda: window.label_errors_dialog is not None or "No likely" in window.status.message_label.text(),
                    timeout=120_000)
    again = window.label_errors_dialog.suspects if window.label_errors_dialog is not None else []
    assert second.image_id not in {s.image_id for s in again}
