"""Pieces every sub-command shares: the ``--library`` option, opening the store, a progress line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from nmid_desktop.core.config import Settings, load_settings
from nmid_desktop.core.jobs import CancelToken, Job, Progress, run_job

if TYPE_CHECKING:
    from nmid_desktop.core.store import Store

T = TypeVar("T")


def add_library_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--library PATH|URL`` (default: settings' library, else the user data folder)."""
    parser.add_argument(
        "--library",
        default=None,
        metavar="PATH|URL",
        help="library folder, or postgresql://user@host:port/db for a lab's shared library "
        "(default: the one in settings, else the user data folder)",
    )


def library_location(args: argparse.Namespace, settings: Settings | None = None) -> Path | str:
    """The library chosen by ``--library``, the settings, or the default: a folder or a URL (kept as text)."""
    from nmid_desktop.workspace.library import resolve_library

    return resolve_library(getattr(args, "library", None), settings)


def library_path(args: argparse.Namespace, settings: Settings | None = None) -> Path:
    """The library *folder* chosen by the arguments (a shared library's is its shared folder)."""
    location = library_location(args, settings)
    if isinstance(location, Path):
        return location
    settings = settings or load_settings()
    if not settings.shared_folder:
        from nmid_desktop.core.errors import ConfigError

        raise ConfigError("a shared library needs the shared_folder setting (this PC's mount of the lab's folder)")
    return Path(settings.shared_folder)


def open_store(args: argparse.Namespace, *, create: bool = True) -> Store:
    """Open the library named by the arguments."""
    from nmid_desktop.core.store import open_library

    return open_library(library_location(args), create=create)


class ProgressLine:
    """Prints a job's progress as one self-overwriting line on stderr when it is a terminal."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_len = 0

    def __call__(self, progress: Progress) -> None:
        if not self.tty:
            return
        total = f"/{progress.total}" if progress.total else ""
        text = f"{progress.done}{total} {progress.message}"[:120]
        self.stream.write("\r" + text + " " * max(0, self._last_len - len(text)))
        self.stream.flush()
        self._last_len = len(text)

    def close(self) -> None:
        if self.tty and self._last_len:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self.stream.flush()


def drive(job: Job[T], token: CancelToken | None = None) -> T:
    """Run a job with a progress line; Ctrl+C cancels it cleanly (the job's rollback runs)."""
    line = ProgressLine()
    try:
        return run_job(job, line, token)
    except KeyboardInterrupt:
        job.close()
        raise
    finally:
        line.close()


EXIT_CODES = (
    "exit status: 0 when every item succeeded; 1 when any item failed, or a budget or a cancel stopped a "
    "batch (what was done is kept); 2 for a usage error; 130 on Ctrl+C"
)


def batch_exit_code(failures: Sequence[object], stopped: str | None) -> int:
    """The one exit-code rule of every batch command (see :data:`EXIT_CODES`).

    Args:
        failures: The items that failed.
        stopped: Why the batch stopped early (``budget``, ``cancelled``), or None when it ran to the end.
    """
    return 1 if failures or stopped else 0
