"""Entry script that PyInstaller freezes: starts the window.

``NMID_SMOKE_QUIT_MS=N`` (used by packaging/smoke_test.sh only) closes the window after N ms and
prints its title, status bar and local prediction first, so a headless run of the frozen window ends by
itself and shows what it got to.
"""

import os
import sys

from nmid_desktop.qt.app import main


def _arm_smoke_quit(ms: int) -> None:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QLabel, QMainWindow, QWidget

    from nmid_desktop.qt.app import make_application

    app = make_application()  # run_app reuses this instance

    def report_and_quit() -> None:
        for widget in QApplication.topLevelWidgets():
            if isinstance(widget, QMainWindow):
                status = [label.text() for label in widget.statusBar().findChildren(QLabel) if label.text()]
                card = widget.findChild(QWidget, "predictionCard")
                summary = getattr(card, "local_summary", None)
                print(f"window: {widget.windowTitle()!r}", flush=True)
                print(f"status bar: {' | '.join(status)!r}", flush=True)
                print(f"local prediction: {summary.text() if isinstance(summary, QLabel) else '?'!r}", flush=True)
                widget.close()
        app.quit()

    QTimer.singleShot(ms, report_and_quit)


if __name__ == "__main__":
    smoke = os.environ.get("NMID_SMOKE_QUIT_MS")
    if smoke:
        _arm_smoke_quit(int(smoke))
    sys.exit(main())
