"""The window's single "Ask model" job takes the one paid-call path of the batch commands.

``workspace.model_tasks.model_predict_job`` used to do its own estimate, budget check and
client set-up, with no model check; it now runs ``lmm.predict.predict_queries``, so the
budget, the model check, usage recording and the error rule are those of ``nmid classify``.
"""

from __future__ import annotations

import json

import pytest
from fake_openai_server import chat_reply, html_reply
from lmm_helpers import PRICES_TOML

from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.jobs import CancelToken, run_job
from nmid_desktop.core.paths import config_dir
from nmid_desktop.lmm.catalog import ModelUnavailableError
from nmid_desktop.lmm.cost import PRICES_FILE, BudgetExceeded
from nmid_desktop.workspace.model_tasks import model_predict_job

CHAT = "/v1/chat/completions"


@pytest.fixture(autouse=True)
def _user_prices() -> None:
    """The test models' prices in the user's price table, where the window's job reads them."""
    config_dir().mkdir(parents=True, exist_ok=True)
    (config_dir() / PRICES_FILE).write_text(PRICES_TOML, encoding="utf-8")


def _ask(library, settings):
    images = library.images()
    query, demos = images[0], [(i.id, i.label) for i in images[1:4]]
    return query, run_job(model_predict_job(library.root, settings, query.id, demos, CancelToken()))


def test_ask_model_stores_the_prediction_and_records_its_cost(server, library, settings) -> None:
    server.chat_default = lambda req: chat_reply(
        json.dumps({"label": "crazing", "top5": ["crazing", "inclusion"], "confidence": 0.7, "rationale": "cracks"})
    )
    query, answer = _ask(library, settings)
    assert (answer.label, answer.valid, answer.cached) == ("crazing", True, False)
    assert len(server.calls(CHAT)) == 1 and len(server.calls(CHAT)[0].image_urls()) == 4  # 3 demos + the query
    stored = library.predictions(query.id)[0]
    assert stored.predictor == "lmm" and stored.label == "crazing"
    assert library.total_cost() == pytest.approx(answer.cost_usd) and answer.cost_usd > 0


def test_ask_model_refuses_a_retired_model_before_any_call(server, library, settings) -> None:
    settings.lmm.vision_model = "gpt-4-vision-preview"
    with pytest.raises(ModelUnavailableError, match="was shut down on 2024-12-06"):
        _ask(library, settings)
    assert server.calls(CHAT) == []


def test_ask_model_respects_the_budget(server, library, settings) -> None:
    settings.lmm.budget_usd = 0.0
    with pytest.raises(BudgetExceeded, match="setting lmm.budget_usd"):
        _ask(library, settings)
    assert server.calls(CHAT) == []


def test_an_html_answer_is_a_clear_failure_that_costs_nothing(server, library, settings) -> None:
    settings.lmm.max_retries = 0
    server.chat_default = lambda req: html_reply()
    with pytest.raises(NmidError, match=r"^the model call failed: .*") as info:
        _ask(library, settings)
    assert "Traceback" not in str(info.value)
    assert library.total_cost() == 0.0 and library.predictions(library.images()[0].id) == []
