"""The model path against a local OpenAI-compatible server, and the settings dialog's round trip."""

from __future__ import annotations

import json
from pathlib import Path

from gui_helpers import TIMEOUT_MS, drop_files, record, wait_idle, wait_shown
from PySide6.QtCore import Qt

from nmid_desktop.core.config import load_settings, settings_path
from nmid_desktop.core.store import open_library
from nmid_desktop.lmm.questions import load_question_set
from nmid_desktop.lmm.secrets import get_api_key, key_file_path
from nmid_desktop.qt.widgets.status_bar import money

CHAT = "/v1/chat/completions"


def prediction(label: str, confidence: float, top5: list[str]) -> str:
    return json.dumps({"label": label, "top5": top5, "confidence": confidence,
                       "rationale": "Long thin straight features of uniform width."})


def test_model_answer_agreement_and_accept(make_window, library: Path, model_settings, fake_endpoint, query_images, qtbot):
    from fake_openai_server import chat_reply

    fake_endpoint.script(CHAT, chat_reply(prediction("porous", 0.8, ["porous", "nanowires"])))
    window = make_window(library, model_settings)
    qtbot.waitUntil(lambda: window.ctx.endpoint_ok, timeout=TIMEOUT_MS)
    card = window.page.card
    assert card.model_summary.isVisibleTo(window)
    path = query_images["nanowires"][0]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    qtbot.waitUntil(lambda: card.model_answer is not None, timeout=TIMEOUT_MS)
    answer = card.model_answer
    assert (answer.model, answer.label, answer.valid) == ("vision-1", "porous", True)
    assert "thin straight" in card.rationale.text()
    assert card.agreement.text().startswith("≠")  # local says nanowires, the model porous
    request = fake_endpoint.calls(CHAT)[-1]
    assert len(request.image_urls()) == 1 + len(window.current.tiles)  # demonstrations plus the query
    assert all(t.label in request.text() for t in window.current.tiles)
    # Predictor "both": Enter accepts the model's answer, recorded with its model name.
    image_id = window.current_id
    qtbot.keyClick(window, Qt.Key.Key_Return)
    wait_idle(qtbot, window)
    stored = record(library, image_id)
    assert (stored.label, stored.label_source, stored.label_model) == ("porous", "lmm", "vision-1")
    with open_library(library, create=False) as store:
        kept = store.predictions(image_id)
        assert any(p.predictor == "lmm" and p.label == "porous" and p.cost_usd > 0 for p in kept)
        spent = store.total_cost()
    assert spent > 0
    qtbot.waitUntil(lambda: window.status.spend.text() == f"API {money(spent)} of $5.00", timeout=TIMEOUT_MS)

    # A second image where the model agrees with the local prediction.
    fake_endpoint.script(CHAT, chat_reply(prediction("fibres", 0.9, ["fibres"])))
    other = query_images["fibres"][0]
    drop_files(window, [other])
    wait_shown(qtbot, window, other.name)
    qtbot.waitUntil(lambda: card.model_answer is not None and card.model_answer.label == "fibres", timeout=TIMEOUT_MS)
    assert card.agreement.text().startswith("✓")


def test_model_failure_keeps_the_local_prediction(make_window, library: Path, model_settings, fake_endpoint, query_images, qtbot):
    from fake_openai_server import error_reply

    model_settings.lmm.max_retries = 0
    fake_endpoint.script(CHAT, error_reply(500, "internal error"))
    window = make_window(library, model_settings)
    qtbot.waitUntil(lambda: window.ctx.endpoint_ok, timeout=TIMEOUT_MS)
    path = query_images["particles"][1]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    card = window.page.card
    qtbot.waitUntil(lambda: "unavailable" in card.model_summary.text(), timeout=TIMEOUT_MS)
    assert card.suggested == "particles" and window.suggestion()[1] == "local"


def test_description_tab_shows_the_ten_groups(make_window, library: Path, model_settings, fake_endpoint, query_images, qtbot):
    from fake_openai_server import chat_reply

    qs = load_question_set()
    groups = [
        {"group": g, "reasoning": f"reasoning {g}",
         "answers": [{"question": q, "answer": f"answer {g}.{q}"} for q in range(1, len(questions) + 1)]}
        for g, (_, questions) in enumerate(qs.groups, start=1)
    ]
    model_settings.predictor = "local"  # no automatic prediction call: only the description is asked
    fake_endpoint.chat_default = lambda req: chat_reply(json.dumps({"groups": groups}))
    window = make_window(library, model_settings)
    qtbot.waitUntil(lambda: window.ctx.endpoint_ok, timeout=TIMEOUT_MS)
    path = query_images["patterned"][0]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    tab = window.description
    window.page.side_tabs.setCurrentWidget(tab)
    qtbot.waitUntil(tab.describe_button.isEnabled, timeout=TIMEOUT_MS)
    tab.describe_button.click()
    qtbot.waitUntil(lambda: tab.table.rowCount() > 0, timeout=TIMEOUT_MS)
    n_questions = sum(len(q) for _, q in qs.groups)
    assert len(qs.groups) == 10
    assert tab.table.rowCount() == n_questions + 10  # a header row per group
    assert tab.table.item(0, 0).text().startswith("1. ")
    assert tab.table.item(1, 1).text() == "answer 1.1"
    assert "10 groups" in tab.info.text()
    with open_library(library, create=False) as store:
        assert store.descriptions(window.current_id)[0].model == "vision-1"


def test_settings_round_trip(make_window, library: Path, qtbot, fake_endpoint):
    window = make_window(library)
    dialog = window._on_settings_triggered()
    qtbot.waitUntil(lambda: dialog.encoder_combo.count() > 1, timeout=TIMEOUT_MS)  # manifests read in a worker
    dialog.k_spin.setValue(7)
    dialog.strategy_combo.setCurrentIndex(dialog.strategy_combo.findData("random"))
    dialog.predictor_combo.setCurrentIndex(dialog.predictor_combo.findData("both"))
    dialog.local_combo.setCurrentIndex(dialog.local_combo.findData("logreg"))
    dialog.crop_check.setChecked(False)
    dialog.base_url_edit.setText(fake_endpoint.base_url)
    assert dialog.key_edit.echoMode() == dialog.key_edit.EchoMode.Password
    dialog.key_edit.setText("sk-gui-test-0123456789abcdef")
    # The model list comes from the endpoint; a retired model is marked.
    dialog.models_button.click()
    qtbot.waitUntil(lambda: "models listed" in dialog.models_note.text(), timeout=TIMEOUT_MS)
    names = [dialog.vision_combo.itemData(i) for i in range(dialog.vision_combo.count())]
    assert "vision-1" in names and "gpt-4-vision-preview" in names
    assert "retired" in dialog.vision_combo.itemText(names.index("gpt-4-vision-preview"))
    dialog.vision_combo.setCurrentIndex(names.index("vision-1"))
    dialog.image_combo.setCurrentIndex(names.index("image-1"))
    dialog.text_combo.setCurrentIndex(names.index("text-1"))
    dialog.price_in.setValue(1.5)
    dialog.price_out.setValue(6.0)
    dialog.budget_spin.setValue(2.5)
    with qtbot.waitSignal(dialog.saved, timeout=TIMEOUT_MS):
        dialog.buttons.button(dialog.buttons.StandardButton.Save).click()

    saved = load_settings()
    assert (saved.k, saved.strategy, saved.predictor, saved.local_predictor, saved.crop_data_bar) == (
        7, "random", "both", "logreg", False)
    assert (saved.lmm.base_url, saved.lmm.vision_model, saved.lmm.text_model, saved.lmm.image_model) == (
        fake_endpoint.base_url, "vision-1", "text-1", "image-1")
    assert saved.lmm.budget_usd == 2.5
    assert get_api_key() == "sk-gui-test-0123456789abcdef"
    assert key_file_path().is_file()  # no keyring in tests: the private file
    assert "sk-gui-test" not in settings_path().read_text(encoding="utf-8")
    from nmid_desktop.lmm.cost import PriceTable

    assert PriceTable.load().chat("vision-1").input_per_1m == 1.5
    assert window.ctx.settings.k == 7
    qtbot.waitUntil(lambda: window.ctx.endpoint_ok, timeout=TIMEOUT_MS)

    again = window._on_settings_triggered()
    qtbot.waitUntil(lambda: "private file" in again.key_note.text(), timeout=TIMEOUT_MS)
    assert again.k_spin.value() == 7 and again.strategy_combo.currentData() == "random"
    assert again.base_url_edit.text() == fake_endpoint.base_url and again.key_edit.text() == ""
    assert abs(again.price_in.value() - 1.5) < 1e-9 and again.budget_spin.value() == 2.5
    again.reject()


def test_batch_with_model_estimates_first_and_orders_disagreements(
    make_window, library: Path, model_settings, fake_endpoint, query_images, qtbot, tmp_path
):
    from fake_openai_server import chat_reply

    def answer(req):  # noqa: ANN001, ANN202
        # The model disagrees on the fibres image: its prompt is the one whose demonstrations are fibres
        # (the class list names each class once; five fibres demonstrations name it more often).
        label = "porous" if req.text().count("fibres") > 3 else "particles"
        return chat_reply(prediction(label, 0.7, [label]))

    fake_endpoint.chat_default = answer
    window = make_window(library, model_settings)
    qtbot.waitUntil(lambda: window.ctx.endpoint_ok, timeout=TIMEOUT_MS)
    folder = tmp_path / "batch"
    folder.mkdir()
    for label in ("particles", "fibres"):
        path = query_images[label][1]
        (folder / path.name).write_bytes(path.read_bytes())
    panel = window.batch
    panel.confirm_estimates = False
    assert panel.model_check.isEnabled()
    panel.model_check.setChecked(True)
    handle = panel.start(folder)
    with qtbot.waitSignal(handle.finished, timeout=TIMEOUT_MS):
        pass
    assert panel.pending_estimate is not None and panel.pending_estimate.estimate is not None
    assert "estimate" in panel.message.text() and fake_endpoint.calls(CHAT) == []  # nothing sent yet
    second = panel.continue_after_estimate()
    with qtbot.waitSignal(second.finished, timeout=TIMEOUT_MS):
        pass
    rows = {r.name: r for r in panel.model.rows()}
    assert len(fake_endpoint.calls(CHAT)) == 2
    assert all(r.model is not None for r in rows.values())
    assert any(r.agree is False for r in rows.values()) and any(r.agree is True for r in rows.values())

    browser = window.browser
    window.tabs.setCurrentWidget(browser)
    browser.order_combo.setCurrentIndex(browser.order_combo.findData("disagree"))
    qtbot.waitUntil(lambda: browser.count_label.text() == "2 images to review", timeout=TIMEOUT_MS)
    first = browser.model.rows()[0]
    assert rows[first.name].agree is False and "model:" in first.note


def test_synthetic_images_generate_then_accept_or_discard(
    make_window, library: Path, model_settings, fake_endpoint, query_images, qtbot
):
    from fake_openai_server import chat_reply

    qs = load_question_set()
    groups = [{"group": g, "reasoning": "r", "answers": [{"question": 1, "answer": "round particles"}]}
              for g in range(1, len(qs.groups) + 1)]
    model_settings.predictor = "local"
    fake_endpoint.chat_default = lambda req: chat_reply(json.dumps({"groups": groups}))
    window = make_window(library, model_settings)
    qtbot.waitUntil(lambda: window.ctx.endpoint_ok, timeout=TIMEOUT_MS)
    path = query_images["particles"][0]
    drop_files(window, [path])
    wait_shown(qtbot, window, path.name)
    qtbot.keyClick(window, Qt.Key.Key_Return)  # a synthetic image needs a labelled source
    wait_idle(qtbot, window)
    with qtbot.waitSignal(window.description.describe().finished, timeout=TIMEOUT_MS):
        pass
    tab = window.synthetic
    tab.count.setValue(2)
    with qtbot.waitSignal(tab.generate().finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: len(tab.cards) == 2, timeout=TIMEOUT_MS)
    (first, card_a), (second, card_b) = sorted(tab.cards.items())
    card_a.accept_button.click()
    card_b.discard_button.click()
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: not card_a.accept_button.isEnabled() and not card_b.discard_button.isEnabled(),
                    timeout=TIMEOUT_MS)
    a, b = record(library, first), record(library, second)
    assert a.synthetic and a.source_image_id == window.current_id and a.review == "accepted"
    assert b.synthetic and b.review == "rejected"
    assert fake_endpoint.calls("/v1/images/generations")


def test_switching_library_reopens_engine_and_browser(make_window, library: Path, prepared_library: Path, qtbot, tmp_path):
    import copy
    import shutil

    window = make_window(library)
    other = tmp_path / "other-library"
    shutil.copytree(prepared_library, other)
    with open_library(other) as store:
        store.set_label(1, "relabelled-elsewhere", source="expert")
    settings = copy.deepcopy(window.ctx.settings)
    settings.library = str(other)
    window.apply_settings(settings)
    qtbot.waitUntil(lambda: window.ctx.status is not None and window.ctx.status.root == other, timeout=TIMEOUT_MS)
    assert "relabelled-elsewhere" in window.ctx.status.class_names
    window.tabs.setCurrentWidget(window.browser)
    qtbot.waitUntil(lambda: any(r.label == "relabelled-elsewhere" for r in window.browser.model.rows()),
                    timeout=TIMEOUT_MS)


def test_model_batch_after_the_estimate_can_be_cancelled(
    make_window, library: Path, model_settings, fake_endpoint, query_images, qtbot, tmp_path, monkeypatch
):
    """Yes on the estimate starts the paid batch; its Cancel is enabled and Start is not while it runs."""
    import threading

    from fake_openai_server import chat_reply
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QMessageBox

    release = threading.Event()

    def slow_answer(req):  # noqa: ANN001, ANN202
        release.wait(30)
        return chat_reply(prediction("particles", 0.7, ["particles"]))

    fake_endpoint.chat_default = slow_answer
    window = make_window(library, model_settings)
    qtbot.waitUntil(lambda: window.ctx.endpoint_ok, timeout=TIMEOUT_MS)
    folder = tmp_path / "batch"
    folder.mkdir()
    for label in ("particles", "fibres"):
        path = query_images[label][1]
        (folder / path.name).write_bytes(path.read_bytes())
    panel = window.batch
    window.tabs.setCurrentWidget(panel)
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)  # the user says Yes
    panel.model_check.setChecked(True)
    panel.folder_edit.setText(str(folder))
    qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(fake_endpoint.calls(CHAT)) >= 1, timeout=TIMEOUT_MS)
    qtbot.wait(200)
    try:
        assert panel.handle is not None and panel.handle.running
        assert panel.cancel_button.isEnabled() and not panel.start_button.isEnabled()
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    finally:
        release.set()
    qtbot.waitUntil(lambda: not panel.handle.running, timeout=TIMEOUT_MS)
    assert panel.start_button.isEnabled() and not panel.cancel_button.isEnabled()
