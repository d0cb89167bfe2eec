"""Starting the application: `nmid gui` parses without Qt, run_app opens the window and returns on close."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from nmid_desktop.qt.app import run_app
from nmid_desktop.qt.main_window import MainWindow
from nmid_desktop.workspace.library import resolve_library


def test_gui_command_imports_qt_only_when_run():
    code = (
        "import argparse, sys\n"
        "from nmid_desktop.commands import gui\n"
        "p = argparse.ArgumentParser(); sub = p.add_subparsers()\n"
        "gui.register(sub)\n"
        "args = p.parse_args(['gui', '--library', 'x', '--demo'])\n"
        "print(args.demo, args.library, 'PySide6' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["True", "x", "False"]


def test_library_resolution(tmp_path: Path):
    from nmid_desktop.core.config import Settings
    from nmid_desktop.core.paths import data_dir, default_library_dir

    settings = Settings()
    assert resolve_library(tmp_path, settings, demo=True) == tmp_path
    assert resolve_library(None, settings, demo=True) == data_dir() / "demo"
    assert resolve_library(None, settings, demo=False) == default_library_dir()
    settings.library = str(tmp_path / "lab")
    assert resolve_library(None, settings, demo=False) == tmp_path / "lab"


def test_run_app_shows_the_window_and_returns_when_it_closes(qapp, tmp_path: Path, monkeypatch):
    # Closed 0.3 s after start, the encoder may still be loading: wait for it here, because this
    # test asserts that every thread ended (closing for real abandons it after 1.5 s).
    monkeypatch.setattr("nmid_desktop.qt.main_window.SHUTDOWN_WAIT_S", 120.0)
    seen: list[MainWindow] = []

    def close_it() -> None:
        windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        seen.extend(windows)
        for window in windows:
            window.close()

    QTimer.singleShot(300, close_it)
    assert run_app(tmp_path / "lib", demo=False) == 0
    assert len(seen) == 1 and seen[0].jobs.thread_count() == 0
    assert (tmp_path / "lib" / "library.sqlite").is_file()


def test_nmid_desktop_file_argument_opens_the_file(qtbot, library: Path, query_images, shared_encoder):
    """`nmid-desktop FILE` (the desktop entry's `Exec=nmid-desktop %F`) shows that file in the window."""
    from nmid_desktop.qt.app import build_parser, open_window

    path = query_images["porous"][0]
    args = build_parser().parse_args([str(path), "--library", str(library)])
    window = open_window(args.library, args.demo, args.paths, encoder=shared_encoder)
    try:
        qtbot.waitUntil(lambda: window.current is not None, timeout=60_000)
        assert window.current.record.original_name == path.name
        assert len(window.current.tiles) > 0
        assert window.last_error is None
    finally:
        window.close()
    assert window.jobs.thread_count() == 0


def test_nmid_gui_takes_files_too():
    from nmid_desktop.cli import build_parser

    args = build_parser().parse_args(["gui", "a.tif", "folder", "--demo"])
    assert [str(p) for p in args.paths] == ["a.tif", "folder"] and args.demo
