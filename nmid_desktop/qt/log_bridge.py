"""Warnings logged anywhere (often in a worker thread) shown in the window, in words."""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal

# Failed jobs are reported by the job manager (with their kind); their traceback lines only
# belong in the log file.
_SKIP = ("nmid_desktop.qt.workers",)


class LogBridge(QObject):
    """Re-emits the package's WARNING and ERROR records as a signal in the GUI thread.

    Create it in the GUI thread; records logged in workers reach ``warned`` queued.
    """

    warned = Signal(str)  # the record's first line, as the user reads it

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._handler = _BridgeHandler(self)
        logging.getLogger("nmid_desktop").addHandler(self._handler)

    def close(self) -> None:
        """Stop listening (the window closes)."""
        logging.getLogger("nmid_desktop").removeHandler(self._handler)


class _BridgeHandler(logging.Handler):
    def __init__(self, bridge: LogBridge) -> None:
        super().__init__(logging.WARNING)
        self._bridge = bridge

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_SKIP):
            return
        try:
            text = record.getMessage().strip().splitlines()[0]
            self._bridge.warned.emit(text)
        except Exception:  # noqa: BLE001 - a log handler must never raise into the caller
            self.handleError(record)
