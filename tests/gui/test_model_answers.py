"""Ask model in real use: Cancel takes effect at once, and a stored answer is shown on reopening."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from gui_helpers import TIMEOUT_MS, drop_files, wait_shown
from PySide6.QtCore import Qt

CHAT = "/v1/chat/completions"


def _prediction(label: str) -> str:
    return json.dumps({"label": label, "top5": [label], "confidence": 0.8, "rationale": "Round features."})


def test_cancel_ask_model_takes_effect_at_once_and_drops_the_late_answer(
    make_window, library: Path, model_settings, fake_endpoint, query_images, qtbot
):
    from fake_openai_server import chat_reply

    model_settings.predictor = "local"  # asked by the button only
    model_settings.lmm.timeout_s = 30.0
    fake_endpoint.script(CHAT, dataclasses.replace(chat_reply(_prediction("porous")), delay_s=3.0))
    window = make_window(library, model_settings)
    qtbot.waitUntil(lambda: window.ctx.endpoint_ok, timeout=TIMEOUT_MS)
    path = query_images["particles"][0]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    card = window.page.card
    qtbot.mouseClick(card.ask_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(fake_endpoint.calls(CHAT)) == 1, timeout=TIMEOUT_MS)  # the request is on the wire
    assert "Asking" in card.model_summary.text() and card.cancel_model_button.isVisible()

    start = time.perf_counter()
    qtbot.mouseClick(card.cancel_model_button, Qt.MouseButton.LeftButton)
    took = time.perf_counter() - start
    assert "Cancelled" in card.model_summary.text()  # at once, while the worker still waits
    assert not card.cancel_model_button.isVisible() and card.ask_button.isEnabled()
    assert not window.jobs.is_running("lmm") and took < 1.0

    qtbot.wait(4000)  # the server answers after 3 s: that late answer must not reach the card
    assert "Cancelled" in card.model_summary.text() and card.model_answer is None


def test_stored_model_answer_is_shown_when_the_image_is_reopened(
    make_window, library: Path, model_settings, fake_endpoint, query_images, qtbot
):
    from fake_openai_server import chat_reply

    fake_endpoint.script(CHAT, chat_reply(_prediction("porous")), chat_reply(_prediction("fibres")))
    window = make_window(library, model_settings)  # predictor "both": each new image is asked once
    qtbot.waitUntil(lambda: window.ctx.endpoint_ok, timeout=TIMEOUT_MS)
    first, second = query_images["porous"][0], query_images["fibres"][0]
    drop_files(window, [first, second])
    wait_shown(qtbot, window, first.name)
    card = window.page.card
    qtbot.waitUntil(lambda: card.model_answer is not None and card.model_answer.label == "porous", timeout=TIMEOUT_MS)
    qtbot.keyClick(window, Qt.Key.Key_PageDown)
    wait_shown(qtbot, window, second.name)
    qtbot.waitUntil(lambda: card.model_answer is not None and card.model_answer.label == "fibres", timeout=TIMEOUT_MS)
    paid = len(fake_endpoint.calls(CHAT))
    assert paid == 2

    qtbot.keyClick(window, Qt.Key.Key_PageUp)  # reopen the first
    wait_shown(qtbot, window, first.name)
    assert card.model_answer is not None and card.model_answer.label == "porous"
    assert "stored answer" in card.model_summary.text() and "Round features" in card.rationale.text()
    qtbot.wait(500)
    assert len(fake_endpoint.calls(CHAT)) == paid  # not asked (nor paid) again
