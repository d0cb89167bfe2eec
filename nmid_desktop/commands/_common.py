"""Pieces every sub-command shares: the ``--library`` option, opening the store, a progress line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from nmid_desktop.core.config import Settings, load_settings
from nmid_desktop.core.jobs import CancelToken, Job, Progress, run_job
from nmid_desktop.core.text import printable

if TYPE_CHECKING:
    from nmid_desktop.core.store import Store
    from nmid_desktop.lmm.client import LmmClient

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


def add_refresh_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--refresh`` to a paid command: ask the endpoint again instead of serving cached answers."""
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="ask the model again even where the answer cache holds one, and replace the cached answer "
        "(costs money again; `nmid cache clear` empties the cache)",
    )


def refresh_client(args: argparse.Namespace, settings: Settings) -> LmmClient | None:
    """With ``--refresh`` (and not ``--dry-run``): a client that never serves cached answers, else None.

    None lets the job build its own client as usual. The caller closes the returned client.

    Raises:
        NoEndpointError: With ``--refresh`` when no endpoint is configured.
    """
    if not getattr(args, "refresh", False) or getattr(args, "dry_run", False):
        return None
    from nmid_desktop.lmm.client import LmmClient

    return LmmClient.from_settings(settings.lmm, refresh=True)


def open_store(args: argparse.Namespace, *, create: bool = True) -> Store:
    """Open the library named by the arguments."""
    from nmid_desktop.core.store import open_library

    return open_library(library_location(args), create=create)


class ProgressLine:
    """Prints a job's progress on stderr: one self-overwriting line on a terminal, plain lines otherwise.

    When the stream is not a terminal (a log file, a pipe, CI), a plain line is printed for
    the first report, then at most once every ``interval_s`` seconds, and the latest one at
    :meth:`close`, so a long command is never silent for minutes.
    """

    def __init__(self, stream: TextIO | None = None, *, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream: TextIO = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval_s = interval_s
        self._clock = clock
        self._last_len = 0
        self._last_print: float | None = None
        self._pending: str | None = None  # the latest report not printed yet (plain lines)

    @staticmethod
    def _text(progress: Progress) -> str:
        total = f"/{progress.total}" if progress.total else ""
        return printable(f"{progress.done}{total} {progress.message}".rstrip())[:120]

    def __call__(self, progress: Progress) -> None:
        text = self._text(progress)
        if not self.tty:
            now = self._clock()
            if self._last_print is None or now - self._last_print >= self.interval_s:
                self.stream.write(text + "\n")
                self.stream.flush()
                self._last_print = now
                self._pending = None
            else:
                self._pending = text
            return
        self.stream.write("\r" + text + " " * max(0, self._last_len - len(text)))
        self.stream.flush()
        self._last_len = len(text)

    def close(self) -> None:
        """Clear the terminal line, or print the latest report not printed yet."""
        if not self.tty:
            if self._pending is not None:
                self.stream.write(self._pending + "\n")
                self.stream.flush()
                self._pending = None
            return
        if self._last_len:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self.stream.flush()
            self._last_len = 0


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
