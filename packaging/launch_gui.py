"""Entry script that PyInstaller freezes: starts the window.

``NMID_SMOKE_QUIT_MS=N`` (used by packaging/smoke_test.sh only) closes the window after N ms and
prints its title and status-bar message first, so a headless run of the frozen window ends by
itself and shows what it got to.
"""

import os
import sys

from nmid_desktop.qt.app import main


def _arm_smoke_quit(ms: int) -> None:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMainWindow

    from nmid_desktop.qt.app import make_application

    app = make_application()  # run_app reuses this instance

    def report_and_quit() -> None:
        for widget in QApplication.topLevelWidgets():
            if isinstance(widget, QMainWindow):
                print(f"window: {widget.windowTitle()!r}; status: {widget.statusBar().currentMessage()!r}",
                      flush=True)
                widget.close()
        app.quit()

    QTimer.singleShot(ms, report_and_quit)


if __name__ == "__main__":
    smoke = os.environ.get("NMID_SMOKE_QUIT_MS")
    if smoke:
        _arm_smoke_quit(int(smoke))
    sys.exit(main())
