"""Helpers for GUI tests: drops through QMimeData, waiting for the window's jobs, reading the library."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QWidget

from nmid_desktop.core.store import ImageRecord, open_library
from nmid_desktop.qt.main_window import mime_for_paths

TIMEOUT_MS = 60_000  # a loaded 2-core machine can be very slow; waits end as soon as the condition holds


def drop_files(widget: QWidget, paths: list[Path]) -> None:
    """Drag file URLs over a widget and drop them, as a file manager does."""
    mime = mime_for_paths(paths)  # kept referenced: the events only point at it
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    buttons, mods = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(pos, Qt.DropAction.CopyAction, mime, buttons, mods)
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted(), "the window refused the drag"
    move = QDragMoveEvent(pos, Qt.DropAction.CopyAction, mime, buttons, mods)
    QApplication.sendEvent(widget, move)
    drop = QDropEvent(pos, Qt.DropAction.CopyAction, mime, buttons, mods)
    QApplication.sendEvent(widget, drop)
    assert drop.isAccepted(), "the window refused the drop"


def wait_idle(qtbot, window, kinds: tuple[str, ...] = ("open", "query", "prepare", "status")) -> None:  # noqa: ANN001
    """Wait until none of these job kinds runs (label writes always count)."""

    def idle() -> bool:
        running = window.jobs.running_kinds()
        return not any(k in kinds or k.startswith("label") for k in running)

    qtbot.waitUntil(idle, timeout=TIMEOUT_MS)


def wait_shown(qtbot, window, name: str | None = None) -> None:  # noqa: ANN001
    """Wait until the current image's query finished (optionally: for a file of this name)."""

    def shown() -> bool:
        if window.last_error:
            raise AssertionError(window.last_error)
        result = window.current
        if result is None or result.image_id != window.current_id:
            return False
        return name is None or result.record.original_name == name

    try:
        qtbot.waitUntil(shown, timeout=TIMEOUT_MS)
    except Exception as exc:  # a hang: say what the window was doing, and where every thread was
        import faulthandler
        import sys

        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        jobs = {kind: handle.outcome or "running" for kind, handle in getattr(window.jobs, "_latest", {}).items()}
        current = window.current
        raise AssertionError(
            f"{name or 'the image'} was not shown: current_id={window.current_id}, "
            f"current={None if current is None else (current.image_id, current.record.original_name)}, "
            f"queue={getattr(window, 'queue', None)}, position={getattr(window, 'position', None)}, jobs={jobs}"
        ) from exc


def record(library: Path, image_id: int) -> ImageRecord:
    """Read an image's record with a connection of the test's own."""
    with open_library(library, create=False) as store:
        return store.get_image(image_id)


def count_images(library: Path) -> int:
    """Images in the library."""
    with open_library(library, create=False) as store:
        return store.count_images()
