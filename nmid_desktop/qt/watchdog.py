"""Measure how long the GUI thread is kept from its event loop (the responsiveness budget is 100 ms).

A timer asks to fire every ``interval_ms``; when the event loop is busy (a slot
doing work, a long paint, the GIL held by a worker) the tick comes late. The
lateness of each tick is a *stall*. Used by the GUI tests and the benchmarks.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, Qt, QTimer


class StallWatchdog(QObject):
    """Records the longest delay of a fast repeating timer.

    Attributes:
        max_stall_s: Longest lateness seen, in seconds.
        stalls: Every lateness over ``report_s``, as ``(time since start, seconds)``.
        ticks: Ticks counted.
    """

    def __init__(self, interval_ms: int = 10, report_s: float = 0.1, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.interval_s = interval_ms / 1000.0
        self.report_s = report_s
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._on_timer_timeout)
        self._last = 0.0
        self._start = 0.0
        self.max_stall_s = 0.0
        self.stalls: list[tuple[float, float]] = []
        self.ticks = 0

    def start(self) -> None:
        """Start (or restart) measuring."""
        self.max_stall_s = 0.0
        self.stalls = []
        self.ticks = 0
        self._start = self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> float:
        """Stop measuring; returns the longest stall in seconds."""
        self._timer.stop()
        return self.max_stall_s

    def _on_timer_timeout(self) -> None:
        now = time.perf_counter()
        stall = max(0.0, now - self._last - self.interval_s)
        self._last = now
        self.ticks += 1
        if stall > self.max_stall_s:
            self.max_stall_s = stall
        if stall > self.report_s:
            self.stalls.append((now - self._start, stall))
