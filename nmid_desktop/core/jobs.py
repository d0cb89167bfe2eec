"""Long work as generators: ``yield Progress`` between steps, ``return`` the result.

Every ``yield`` is a cancel point. The CLI drives a job with :func:`run_job` and a
text progress line; the window drives the same generator in a worker thread.
Cancelling closes the generator, which raises ``GeneratorExit`` at the pending
``yield`` so that ``with``/``finally`` blocks in the job roll back cleanly.
Work that only takes callbacks (a training loop, an HTTP client) receives a
:class:`CancelToken` and calls :meth:`CancelToken.raise_if_cancelled`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from nmid_desktop.core.errors import Cancelled

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress report of a job.

    Attributes:
        done: Units of work finished so far.
        total: Units of work in all, or 0 when unknown.
        message: A short human-readable line (the current file, the epoch loss).
        data: Optional structured payload (e.g. per-epoch metrics) for live views.
    """

    done: int
    total: int
    message: str = ""
    data: Any = None

    @property
    def fraction(self) -> float | None:
        """Done over total in [0, 1], or None when the total is unknown."""
        return None if self.total <= 0 else min(1.0, self.done / self.total)


Job = Generator[Progress, None, T]


class CancelToken:
    """A thread-safe cancel flag shared between a job and whoever drives it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop at its next cancel point."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested."""
        if self._event.is_set():
            raise Cancelled()


def run_job(
    job: Job[T],
    on_progress: Callable[[Progress], None] | None = None,
    token: CancelToken | None = None,
) -> T:
    """Drive a job generator to its end and return its result.

    Args:
        job: The generator.
        on_progress: Called with every progress report, in the driving thread.
        token: When cancelled, the generator is closed at its next ``yield``.

    Returns:
        The value the generator returned.

    Raises:
        Cancelled: If the token was cancelled before the job finished.
    """
    try:
        while True:
            if token is not None and token.cancelled:
                job.close()
                raise Cancelled()
            progress = next(job)
            if on_progress is not None:
                on_progress(progress)
    except StopIteration as stop:
        return stop.value


# The window's GUI thread, once the window marks it: heavy work (embedding, index builds and
# searches, training) refuses to run there, so a slot that does such work fails loudly in the
# tests instead of freezing a user's window. The CLI marks nothing: it runs on the main thread.
_gui_thread_ident: int | None = None


def mark_gui_thread(active: bool = True) -> None:
    """Declare the calling thread the GUI thread while a window is open (``active=False`` on close)."""
    global _gui_thread_ident
    _gui_thread_ident = threading.get_ident() if active else None


def ensure_worker_thread(what: str) -> None:
    """Raise if called on the GUI thread.

    Args:
        what: The work, for the message ("embedding", "index search").

    Raises:
        RuntimeError: On the thread passed to :func:`mark_gui_thread` (a programming error,
            not a user's: long work belongs in a worker).
    """
    if _gui_thread_ident is not None and threading.get_ident() == _gui_thread_ident:
        raise RuntimeError(f"{what} ran on the GUI thread; long work must run in a worker")
