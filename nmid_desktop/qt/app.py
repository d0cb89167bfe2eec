"""Start the window: ``nmid-desktop`` (a GUI script) and ``nmid gui`` both end up in :func:`run_app`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QCoreApplication, QSettings
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QMessageBox

from nmid_desktop import __version__
from nmid_desktop.core.config import Settings, load_settings
from nmid_desktop.core.display import window_problem
from nmid_desktop.core.errors import ConfigError, DisplayError, NmidError
from nmid_desktop.core.paths import APP_AUTHOR, APP_NAME, resources_dir
from nmid_desktop.workspace.library import resolve_library

if TYPE_CHECKING:
    from nmid_desktop.qt.main_window import MainWindow

log = logging.getLogger(__name__)


def make_application(argv: Sequence[str] | None = None) -> QApplication:
    """The QApplication (the existing one when there is one), named for QSettings and styled."""
    app = QApplication.instance()
    if app is None:
        app = QApplication(list(argv) if argv is not None else [sys.argv[0]])
    QCoreApplication.setOrganizationName(APP_AUTHOR)
    QCoreApplication.setApplicationName(APP_NAME)
    QCoreApplication.setApplicationVersion(__version__)
    # Window geometry only (labelme's rule): readable INI, never the registry; settings live in TOML.
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    icon = resources_dir() / "icons" / "nmid-desktop.svg"
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    from nmid_desktop.qt.style import apply_style

    apply_style(app)  # type: ignore[arg-type]
    return app  # type: ignore[return-value]


def open_window(
    library: Path | None,
    demo: bool,
    paths: Sequence[Path] = (),
    *,
    encoder: object = None,
) -> MainWindow:
    """Make the application object and show the main window, opening ``paths`` as a drop would.

    Args:
        library: Library folder, or None for the settings' (or the default) library.
        demo: Use the demo library, filled with the built-in demo images when empty.
        paths: Image files or folders to open once the library is ready (``nmid-desktop FILE...``,
            which is how a desktop's file manager starts it).
        encoder: A loaded encoder to share (tests load it once).

    Returns:
        The shown window.
    """
    make_application()
    try:
        settings = load_settings()
    except ConfigError as exc:
        QMessageBox.warning(None, "Settings not usable", f"{exc}\n\nThe built-in defaults are used this time.")
        settings = Settings()
    from nmid_desktop.qt.main_window import MainWindow

    window = MainWindow(resolve_library(library, settings, demo=demo), settings, demo=demo, encoder=encoder)
    window.show()
    if paths:
        # Queued on the engine lane behind the library opening (and the demo build).
        window.open_paths([Path(p) for p in paths])
    return window


def run_app(library: Path | None, demo: bool, paths: Sequence[Path] = (), *, exit_when_stuck: bool = False) -> int:
    """Open the main window and run the event loop until it closes.

    Args:
        library: Library folder, or None for the settings' (or the default) library.
        demo: Use the demo library, filled with the built-in demo images when empty.
        paths: Image files or folders to open in the window.
        exit_when_stuck: End the process at once (``os._exit``) when a worker is still stuck after
            the window closed, as the entry points do; in-process callers (tests) leave it off.

    Returns:
        The process exit code.

    Raises:
        DisplayError: Before Qt is started, when the window cannot open here (Qt itself would
            abort the process with a message about its platform plugin).
    """
    problem = window_problem()
    if problem:
        raise DisplayError(problem)
    window = open_window(library, demo, paths)
    app = QApplication.instance()
    code = int(app.exec()) if app is not None else 1
    del window
    if exit_when_stuck:
        from nmid_desktop.qt.workers import exit_process

        exit_process(code)  # returns unless a worker is stuck in a call nobody waits for any more
    return code


def build_parser() -> argparse.ArgumentParser:
    """The ``nmid-desktop`` arguments: ``[--library PATH] [--demo] [FILE ...]``."""
    parser = argparse.ArgumentParser(prog="nmid-desktop", description="Classify micrographs by retrieved demonstrations.")
    parser.add_argument("paths", nargs="*", type=Path, metavar="FILE",
                        help="images or folders to open, as a drop onto the window would")
    parser.add_argument("--library", type=Path, default=None, metavar="PATH", help="library folder")
    parser.add_argument("--demo", action="store_true", help="open the demo library (built on first use)")
    parser.add_argument("--version", action="version", version=f"nmid-desktop {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``nmid-desktop`` GUI script: ``nmid-desktop [--library PATH] [--demo] [FILE ...]``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = run_app(args.library, args.demo, args.paths, exit_when_stuck=True)
    except NmidError as exc:
        print(f"nmid-desktop: error: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
