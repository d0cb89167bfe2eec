"""Close the window while "Ask model" is stuck on a server that never answers (run as a subprocess).

``python close_scenario.py LIBRARY [SCREENSHOT]`` opens the window on LIBRARY, shows image 1,
presses the card's "Ask model" button against a local server that accepts the connection and
never answers, closes the window once the request is on the wire, and ends the way
``nmid-desktop`` does. It prints one JSON line: how long ``close()`` took. A process that
aborts (``QThread: Destroyed while thread ... is still running``) exits 134 instead of 0.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _silent_server() -> tuple[int, list[socket.socket]]:
    """A TCP server on 127.0.0.1 that accepts and reads, and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            accepted.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], accepted


def main(argv: list[str]) -> int:
    from PySide6.QtCore import Qt, QTimer
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from nmid_desktop.core.config import Settings
    from nmid_desktop.ml.encoders import load_encoder
    from nmid_desktop.qt.app import make_application
    from nmid_desktop.qt.main_window import MainWindow
    from nmid_desktop.qt.workers import abandoned_threads, exit_process

    library = Path(argv[1])
    screenshot = Path(argv[2]) if len(argv) > 2 else None
    port, accepted = _silent_server()
    settings = Settings()
    settings.predictor = "local"  # the model is asked by the button, not on its own
    settings.lmm.base_url = f"http://127.0.0.1:{port}/v1"
    settings.lmm.vision_model = "vision-1"
    settings.lmm.timeout_s = 60.0
    settings.lmm.max_retries = 4
    app = make_application()
    window = MainWindow(library, settings, encoder=load_encoder("efficientnet-lite0-imagenet", device="cpu"))
    window.resize(1400, 900)
    window.show()
    facts: dict[str, object] = {}
    state = {"step": "wait-ready", "t": time.monotonic()}

    def step() -> None:
        if time.monotonic() - state["t"] > 240:  # type: ignore[operator]
            facts["error"] = f"stuck at {state['step']}: jobs {window.jobs.running_kinds()} error {window.last_error}"
            window.close()
            app.quit()
            return
        card = window.page.card
        if state["step"] == "wait-ready":
            status = window.ctx.status
            if status is not None and status.encoder and window.ctx.endpoint_ok:
                window.ctx.open_image_requested.emit(1)  # what a double-click in the library browser sends
                state["step"] = "wait-shown"
        elif state["step"] == "wait-shown":
            if window.current is not None and window.current.image_id == 1 and card.ask_button.isVisible():
                QTest.mouseClick(card.ask_button, Qt.MouseButton.LeftButton)
                state["step"] = "wait-stuck"
        elif state["step"] == "wait-stuck":
            if accepted and window.jobs.is_running("lmm"):
                time.sleep(0.3)  # the request is sent and read by the server, which stays silent
                facts["card"] = card.model_summary.text()
                if screenshot is not None:
                    window.grab().save(str(screenshot))
                facts["running_at_close"] = window.jobs.is_running("lmm")
                start = time.monotonic()
                window.close()
                facts["close_s"] = round(time.monotonic() - start, 3)
                facts["abandoned"] = abandoned_threads()
                app.quit()
                return
        QTimer.singleShot(50, step)

    QTimer.singleShot(50, step)
    code = int(app.exec())
    print(json.dumps(facts), flush=True)
    QApplication.processEvents()
    exit_process(code)  # what nmid-desktop's main and `nmid gui` do after run_app
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
