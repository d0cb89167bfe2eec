"""``nmid evaluate --predictor lmm``: the plug-in registers itself and ranks every test image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fake_openai_server import chat_reply

from nmid_desktop.core.config import save_settings
from nmid_desktop.core.errors import ConfigError
from nmid_desktop.evaluation.runner import PREDICTORS, QueryData, TrainData
from nmid_desktop.lmm.client import ModelUnavailableError
from nmid_desktop.lmm.cost import BudgetExceeded
from nmid_desktop.lmm.evaluation import register as register_lmm
from nmid_desktop.predict.retrieval import Demonstration

CHAT = "/v1/chat/completions"


def split(library):
    images = library.images()
    train_ids = [i.id for i in images if i.id % 2 == 0]
    test = [i for i in images if i.id % 2 == 1][:3]
    labels = {i.id: i.label for i in images}
    train = TrainData(
        encoder="test", encoder_key="test@0", ids=np.array(train_ids), labels=[labels[i] for i in train_ids],
        vectors=np.zeros((len(train_ids), 2), np.float32), classes=["crazing", "inclusion"], searcher=None,
        pool=None, store=library, fold=0, seed=0,
    )
    demos = [[Demonstration(t, labels[t], 0.9 - 0.1 * n) for n, t in enumerate(train_ids[:2])] for _ in test]
    queries = QueryData(ids=np.array([i.id for i in test]), vectors=np.zeros((len(test), 2), np.float32),
                        demonstrations=demos, strategy="similarity", k=2)
    return train, queries


@pytest.fixture
def configured(settings):
    from lmm_helpers import PRICES_TOML

    from nmid_desktop.core.paths import config_dir

    save_settings(settings)
    (config_dir() / "prices.toml").write_text(PRICES_TOML)  # the user's own price entries
    return settings


def test_registering_adds_lmm() -> None:
    register_lmm()
    assert PREDICTORS["lmm"].uses_demonstrations


def test_every_test_image_gets_a_full_ranking_and_spending_is_recorded(server, library, configured) -> None:
    register_lmm()
    answers = iter(["inclusion", "crazing", "rust"])  # the third is outside the taxonomy (repair -> still outside)
    server.chat_default = lambda req: chat_reply(
        json.dumps({"label": next(answers, "rust"), "top5": [], "confidence": 0.6, "rationale": "r"})
    )
    train, queries = split(library)
    rankings = PREDICTORS["lmm"].predict(train, queries)
    assert len(rankings) == 3
    top1 = sorted(r.top1 for r in rankings[:2])
    assert top1 == ["crazing", "inclusion"]
    for ranking in rankings:
        assert sorted(ranking.labels) == ["crazing", "inclusion"]
        assert sum(p for _, p in ranking.items) == pytest.approx(1.0)
        assert ranking.predictor == "lmm" and len(ranking.demo_ids) == 2
    # every call showed 2 demonstrations and the query
    assert all(len(call.image_urls()) == 3 for call in server.calls(CHAT))
    calls = server.calls(CHAT)
    assert len(calls) == 4  # 3 queries + one repair request for the third
    assert library.total_cost() == pytest.approx(4 * (1000 * 1.0 + 100 * 4.0) / 1e6)


def test_invalid_answers_fall_back_to_the_knn_vote(server, library, configured) -> None:
    register_lmm()
    configured.lmm.structured_outputs = False
    save_settings(configured)
    server.chat_default = lambda req: chat_reply(json.dumps({"label": "rust", "top5": [], "confidence": 0.9, "rationale": ""}))
    train, queries = split(library)
    rankings = PREDICTORS["lmm"].predict(train, queries)
    # both demonstrations of every query carry the label of the first training images: the vote follows them
    expected = queries.demonstrations[0][0].label
    assert all(r.top1 == expected for r in rankings)


def test_a_missing_model_stops_the_evaluation(server, library, configured) -> None:
    register_lmm()
    configured.lmm.vision_model = "gone-model"
    save_settings(configured)
    with pytest.raises(ModelUnavailableError, match="setting lmm.vision_model"):
        PREDICTORS["lmm"].predict(*split(library))


def test_the_budget_is_checked_before_the_run(server, library, configured, tmp_path, monkeypatch) -> None:
    from nmid_desktop.core.paths import config_dir

    (config_dir() / "prices.toml").write_text('[chat."vision-1"]\ninput_per_1m = 100000.0\noutput_per_1m = 100000.0\n')
    register_lmm()
    with pytest.raises(BudgetExceeded):
        PREDICTORS["lmm"].predict(*split(library))
    assert server.calls(CHAT) == []


def test_the_plugin_needs_the_library(library, configured) -> None:
    from dataclasses import replace

    register_lmm()
    train, queries = split(library)
    with pytest.raises(ConfigError, match="needs the library"):
        PREDICTORS["lmm"].predict(replace(train, store=None), queries)
