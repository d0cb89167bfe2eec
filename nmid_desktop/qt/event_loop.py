"""Driving the real Qt event loop from scripts (screenshots, benchmarks) without app.exec()."""

from __future__ import annotations

import time
from collections.abc import Callable

from PySide6.QtCore import QEventLoop, QTimer


def spin(seconds: float) -> None:
    """Run the real event loop for a while, as ``app.exec()`` would.

    ``processEvents(maxtime)`` is not used: it starves timers, which skewed the first
    latency figures measured with it.
    """
    loop = QEventLoop()
    QTimer.singleShot(max(1, int(seconds * 1000)), loop.quit)
    loop.exec()


def wait_until(condition: Callable[[], object], timeout: float, what: str, step: float = 0.01) -> None:
    """Spin the event loop until ``condition()`` is true.

    Raises:
        TimeoutError: After ``timeout`` seconds, naming ``what`` was awaited.
    """
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        spin(step)
