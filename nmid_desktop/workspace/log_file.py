"""The window's log file: warnings and failed jobs' tracebacks, in the user's cache folder.

The window shows every warning and error in words; the details a developer needs
(tracebacks) go here, and the window names this file in its messages.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from nmid_desktop.core.paths import cache_dir

LOG_NAME = "nmid-desktop.log"
_PACKAGE_LOGGER = "nmid_desktop"


def log_file_path() -> Path:
    """Where the window's log is written (``<cache>/logs/nmid-desktop.log``)."""
    return cache_dir() / "logs" / LOG_NAME


class _LogFile(logging.handlers.RotatingFileHandler):
    """Marks our handler so that installing twice replaces it instead of doubling every line."""


def install_log_file(level: int = logging.WARNING) -> Path | None:
    """Send the package's warnings and errors (failed jobs' tracebacks included) to the log file.

    The package logger's own level is left alone: lowering it would also let INFO records
    through to the root logger's handlers (stderr).

    Created on first call, never at import. Calling again (a second window, another
    cache folder) replaces the earlier handler.

    Returns:
        The log file, or None when it cannot be created (a read-only cache only costs the log).
    """
    path = log_file_path()
    logger = logging.getLogger(_PACKAGE_LOGGER)
    for handler in list(logger.handlers):
        if isinstance(handler, _LogFile):
            if Path(handler.baseFilename) == path:
                return path
            logger.removeHandler(handler)
            handler.close()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _LogFile(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8", delay=True)
    except OSError:
        return None
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    return path
