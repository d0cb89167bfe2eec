"""Few-shot prediction: the prompt's images and classes, structured and text answers, repair, refusal, storage."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fake_openai_server import Reply, chat_reply
from lmm_helpers import grey
from PIL import Image

from nmid_desktop.core.errors import LabelError
from nmid_desktop.core.jobs import run_job
from nmid_desktop.lmm.predict import predict_images, predict_one, predict_schema

CHAT = "/v1/chat/completions"
CLASSES = ["crazing", "inclusion", "patches"]


def answer(label: str, top5=None, confidence: float = 0.8, rationale: str = "fine dark cracks") -> str:
    return json.dumps({"label": label, "top5": top5 or [label], "confidence": confidence, "rationale": rationale})


DEMOS = [(grey((40, 30), 1), "crazing"), (grey((40, 30), 2), "inclusion"), (grey((40, 30), 3), "crazing")]


def test_the_prompt_holds_k_labelled_demos_the_query_and_the_classes(server, client, settings, prices) -> None:
    server.script(CHAT, chat_reply(answer("crazing", ["crazing", "inclusion"], 0.9), prompt_tokens=3000, completion_tokens=60))
    prediction = predict_one(client, DEMOS, grey((50, 50), 9), CLASSES, settings, prices=prices)
    sent = server.calls(CHAT)[0]
    urls = sent.image_urls()
    assert len(urls) == 4 and all(u.startswith("data:image/png;base64,") for u in urls)  # 3 demos + query
    text = sent.text()
    assert '"crazing", "inclusion", "patches"' in text
    assert "Example 1 of 3. Class: crazing" in text and "Example 2 of 3. Class: inclusion" in text
    assert text.index("Example 3 of 3") < text.index("Query image")
    schema = sent.body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == CLASSES
    assert prediction.valid and prediction.label == "crazing"
    assert [name for name, _ in prediction.ranking] == ["crazing", "inclusion"]
    assert prediction.ranking[0][1] == 0.9
    assert prediction.rationale == "fine dark cracks"
    assert prediction.prompt_version == "predict-v1" and prediction.model == "vision-1"
    assert prediction.cost_usd == pytest.approx((3000 * 1.0 + 60 * 4.0) / 1e6)


def test_a_label_outside_the_taxonomy_gets_one_repair_then_counts(server, client, settings, prices) -> None:
    settings.lmm.structured_outputs = False  # text mode: nothing holds the model to the enum
    server.script(CHAT, chat_reply(answer("scratches")), chat_reply(answer("Patches")))
    prediction = predict_one(client, DEMOS, grey((50, 50), 9), CLASSES, settings, prices=prices)
    calls = [c for c in server.calls(CHAT) if "response_format" not in c.body]
    assert len(calls) == 2
    repair = calls[1].body["messages"]
    assert repair[-2]["role"] == "assistant" and "scratches" in repair[-2]["content"]
    assert '"scratches" is not one of the allowed classes' in repair[-1]["content"]
    assert prediction.valid and prediction.label == "patches" and prediction.repaired
    assert "repaired" in prediction.reason
    assert prediction.tokens_in == 2000  # both calls are counted


def test_a_label_still_outside_after_repair_is_invalid_with_the_reason(server, client, settings, prices) -> None:
    settings.lmm.structured_outputs = False
    server.script(CHAT, chat_reply(answer("scratches")), chat_reply(answer("rust")))
    prediction = predict_one(client, DEMOS, grey((50, 50), 9), CLASSES, settings, prices=prices)
    assert not prediction.valid and prediction.label is None and prediction.ranking == []
    assert "'rust' is not one of the classes, also after a repair request" in prediction.reason
    assert len([c for c in server.calls(CHAT) if "response_format" not in c.body]) == 2  # exactly one repair


def test_a_refusal_is_an_invalid_prediction(server, client, settings, prices) -> None:
    server.script(CHAT, chat_reply(None, refusal="I can't help with identifying this."))
    prediction = predict_one(client, DEMOS, grey((50, 50), 9), CLASSES, settings, prices=prices)
    assert not prediction.valid and "declined" in prediction.reason
    assert len(server.calls(CHAT)) == 1  # a refusal is not "repaired"


def test_text_answers_are_parsed_without_structured_outputs(server, client, settings, prices) -> None:
    server.supports_json_schema = False
    server.chat_default = lambda req: chat_reply("Label: inclusion\nTop-5: inclusion, crazing\nConfidence: 70%\nRationale: dark spots")
    prediction = predict_one(client, DEMOS, grey((50, 50), 9), CLASSES, settings, prices=prices)
    assert (prediction.label, prediction.confidence, prediction.rationale) == ("inclusion", 0.7, "dark spots")


def test_a_content_filter_finish_is_a_refusal(server, client, settings, prices) -> None:
    server.script(CHAT, chat_reply("", finish_reason="content_filter"))
    prediction = predict_one(client, DEMOS, grey((50, 50), 9), CLASSES, settings, prices=prices)
    assert not prediction.valid and "content_filter" in prediction.reason


def test_predict_schema_is_strict() -> None:
    schema = predict_schema(CLASSES)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"label", "top5", "confidence", "rationale"}


def test_empty_taxonomy_is_refused(client, settings) -> None:
    with pytest.raises(LabelError):
        predict_one(client, DEMOS, grey((50, 50), 9), [], settings)


# ----------------------------------------------------------------------------- batches through a classifier

@dataclass(frozen=True)
class Demonstration:
    image_id: int
    label: str
    similarity: float
    source: str = "import"
    synthetic: bool = False


class NearestIdClassifier:
    """Retrieval by id distance (a stand-in for the encoder, with the Classifier's interface)."""

    def __init__(self, store) -> None:
        self.store = store
        self.calls: list[tuple[int, str]] = []

    def embed_image(self, image_id: int) -> np.ndarray:
        return np.array([float(image_id)])

    def embed_file(self, path: Path) -> np.ndarray:
        return np.array([0.0])

    def similar(self, vector: np.ndarray, k: int, strategy: str, exclude_ids=()) -> list[Demonstration]:
        self.calls.append((k, strategy))
        excluded = set(exclude_ids)
        labelled = [(i, label) for i, label in self.store.labelled() if i not in excluded]
        ranked = sorted(labelled, key=lambda pair: abs(pair[0] - vector[0]))
        return [Demonstration(i, label, 1.0 / (1 + abs(i - vector[0]))) for i, label in ranked[:k]]


def test_predict_images_stores_predictions_with_demos_tokens_and_cost(server, library, settings, client, prices) -> None:
    server.chat_default = lambda req: chat_reply(answer("crazing", ["crazing", "inclusion"], 0.75), prompt_tokens=1500, completion_tokens=40)
    classifier = NearestIdClassifier(library)
    ids = [i.id for i in library.images()][:3]
    batch = run_job(predict_images(library, classifier, ids, settings, client=client, prices=prices))
    assert [p.image_id for p in batch] == ids and not batch.failures
    assert classifier.calls[0] == (settings.k, "similarity")  # the query is excluded, not over-fetched
    for prediction in batch:
        assert prediction.image_id not in prediction.demo_ids  # never its own demonstration
        assert len(prediction.demo_ids) == settings.k
        stored = library.predictions(prediction.image_id)[0]
        assert stored.predictor == "lmm" and stored.label == "crazing" and stored.valid
        assert stored.demo_ids == prediction.demo_ids
        assert stored.model == "vision-1" and stored.prompt_version == "predict-v1"
        assert (stored.tokens_in, stored.tokens_out) == (1500, 40)
        assert stored.cost_usd == pytest.approx((1500 + 160) / 1e6)
    assert all(len(c.image_urls()) == settings.k + 1 for c in server.calls(CHAT))
    assert library.total_cost() == pytest.approx(3 * (1500 + 160) / 1e6)
    # labels are not touched: the caller decides
    assert all(i.label_source == "import" for i in library.images())


def test_predict_images_stores_invalid_predictions_and_keeps_labels(server, library, settings, client, prices) -> None:
    server.supports_json_schema = False
    server.chat_default = lambda req: chat_reply(answer("rust"))
    first = library.images()[0]
    batch = run_job(predict_images(library, NearestIdClassifier(library), [first.id], settings, client=client, prices=prices))
    stored = library.predictions(first.id)[0]
    assert not stored.valid and stored.label is None and "also after a repair" in stored.reason
    assert not batch[0].valid
    assert library.get_image(first.id).label == first.label


def test_predict_images_dry_run_retrieves_but_sends_nothing(server, library, settings, prices, tmp_path) -> None:
    outside = tmp_path / "new.png"
    Image.fromarray(grey((100, 80), 3)).save(outside)
    batch = run_job(predict_images(library, NearestIdClassifier(library), [outside], settings, dry_run=True, prices=prices))
    assert batch.dry_run and list(batch) == [] and server.requests == []
    assert batch.estimate.calls == 1 and batch.estimate.cost_usd > 0


def test_predict_images_keeps_finished_results_when_one_call_fails(server, library, settings, client, prices) -> None:
    settings.lmm.max_concurrency = 1
    server.chat_default = lambda req: chat_reply(answer("inclusion"))
    server.script(CHAT, Reply(body="{not json"))
    ids = [i.id for i in library.images()][:3]
    batch = run_job(predict_images(library, NearestIdClassifier(library), ids, settings, client=client, prices=prices))
    assert len(batch) == 2 and len(batch.failures) == 1
    assert batch.failures[0][0] == ids[0]


def test_a_classifier_with_exclude_ids_is_asked_for_exactly_k(server, library, settings, client, prices) -> None:
    server.chat_default = lambda req: chat_reply(answer("crazing"))
    settings.strategy = "random"
    classifier = NearestIdClassifier(library)
    first = library.images()[0]
    batch = run_job(predict_images(library, classifier, [first.id], settings, client=client, prices=prices))
    assert classifier.calls == [(settings.k, "random")]
    assert first.id not in batch[0].demo_ids and len(batch[0].demo_ids) == settings.k


def test_predict_images_offline_fails_before_any_retrieval(library, settings, monkeypatch) -> None:
    from nmid_desktop.lmm.client import NoEndpointError

    settings.lmm.base_url = ""
    monkeypatch.delenv("OPENAI_API_KEY")
    classifier = NearestIdClassifier(library)
    with pytest.raises(NoEndpointError, match="no endpoint configured"):
        run_job(predict_images(library, classifier, [library.images()[0].id], settings))
    assert classifier.calls == []
