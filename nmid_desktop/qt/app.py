"""Start the window: ``nmid-desktop`` (a GUI script) and ``nmid gui`` both end up in :func:`run_app`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QSettings
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QMessageBox

from nmid_desktop import __version__
from nmid_desktop.core.config import Settings, load_settings
from nmid_desktop.core.errors import ConfigError
from nmid_desktop.core.paths import APP_AUTHOR, APP_NAME, data_dir, default_library_dir, resources_dir

log = logging.getLogger(__name__)


def resolve_library(library: Path | None, settings: Settings, demo: bool) -> Path:
    """The library folder: ``--library``, else the demo folder with ``--demo``, else settings, else the default."""
    if library is not None:
        return Path(library)
    if demo:
        return data_dir() / "demo"
    return Path(settings.library) if settings.library else default_library_dir()


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


def run_app(library: Path | None, demo: bool) -> int:
    """Open the main window and run the event loop until it closes.

    Args:
        library: Library folder, or None for the settings' (or the default) library.
        demo: Use the demo library, filled with the built-in demo images when empty.

    Returns:
        The process exit code.
    """
    app = make_application()
    try:
        settings = load_settings()
    except ConfigError as exc:
        QMessageBox.warning(None, "Settings not usable", f"{exc}\n\nThe built-in defaults are used this time.")
        settings = Settings()
    from nmid_desktop.qt.main_window import MainWindow

    window = MainWindow(resolve_library(library, settings, demo), settings, demo=demo)
    window.show()
    return int(app.exec())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``nmid-desktop`` GUI script: ``nmid-desktop [--library PATH] [--demo]``."""
    parser = argparse.ArgumentParser(prog="nmid-desktop", description="Classify micrographs by retrieved demonstrations.")
    parser.add_argument("--library", type=Path, default=None, metavar="PATH", help="library folder")
    parser.add_argument("--demo", action="store_true", help="open the demo library (built on first use)")
    parser.add_argument("--version", action="version", version=f"nmid-desktop {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_app(args.library, args.demo))


if __name__ == "__main__":  # pragma: no cover
    main()
