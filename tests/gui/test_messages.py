"""Warnings and errors reach the window in words; tracebacks go to a log file the window names."""

from __future__ import annotations

from pathlib import Path

from gui_helpers import TIMEOUT_MS, drop_files, wait_shown
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialogButtonBox, QPlainTextEdit

CHAT = "/v1/chat/completions"


def test_keyring_fallback_is_shown_in_the_window(make_window, library: Path, qtbot):
    from nmid_desktop.qt.widgets.settings_dialog import SettingsDialog

    window = make_window(library)  # the test keyring fails: the key goes to a private file
    qtbot.mouseClick(window.toolbar.widgetForAction(window.settings_action), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.findChild(SettingsDialog) is not None, timeout=TIMEOUT_MS)
    dialog = window.findChild(SettingsDialog)
    qtbot.keyClicks(dialog.key_edit, "sk-test-123")
    qtbot.mouseClick(dialog.buttons.button(QDialogButtonBox.StandardButton.Save), Qt.MouseButton.LeftButton)
    status = window.status
    qtbot.waitUntil(lambda: any("keyring" in w for w in status.warnings), timeout=TIMEOUT_MS)
    assert status.warnings_button.isVisible() and status.warnings_button.text() == f"⚠ {len(status.warnings)}"
    assert "saved in" in next(w for w in status.warnings if "keyring" in w)
    assert "sk-test-123" not in "\n".join(status.warnings)  # the key itself is never shown
    qtbot.mouseClick(status.warnings_button, Qt.MouseButton.LeftButton)
    shown = status._messages_dialog.findChild(QPlainTextEdit)
    assert "keyring" in shown.toPlainText() and window.log_path in shown.toPlainText()


def test_failed_model_call_is_worded_and_its_traceback_logged(
    make_window, library: Path, model_settings, fake_endpoint, query_images, qtbot
):
    from fake_openai_server import Reply

    model_settings.predictor = "local"
    fake_endpoint.script(CHAT, Reply(status=200, body="<html><body>Gateway says hello</body></html>",
                                     headers={"Content-Type": "text/html"}))
    window = make_window(library, model_settings)
    qtbot.waitUntil(lambda: window.ctx.endpoint_ok, timeout=TIMEOUT_MS)
    path = query_images["fibres"][0]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    card = window.page.card
    qtbot.mouseClick(card.ask_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "unavailable" in card.model_summary.text(), timeout=TIMEOUT_MS)
    status = window.status
    qtbot.waitUntil(lambda: any(w.startswith("Asking the model failed") for w in status.warnings), timeout=TIMEOUT_MS)
    # The client words a proxy's HTML page (issue 10); the window shows those words, never a traceback.
    assert "a proxy or captive portal may be answering" in card.rationale.text()
    assert "lmm.base_url" in card.rationale.text() and "AttributeError" not in card.rationale.text()
    log_file = Path(window.log_path)
    assert log_file.is_file() and log_file.parent.name == "logs"
    qtbot.waitUntil(lambda: "Traceback" in log_file.read_text(encoding="utf-8"), timeout=TIMEOUT_MS)
    assert "job lmm failed" in log_file.read_text(encoding="utf-8")
