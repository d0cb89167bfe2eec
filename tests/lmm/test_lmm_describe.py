"""Structured descriptions end to end: image parts, data bar cropped, rows stored, cost, budget, faults, cancel."""

from __future__ import annotations

import base64
import io
import json

import pytest
from fake_openai_server import chat_reply
from lmm_helpers import grey
from PIL import Image

from nmid_desktop.core.errors import Cancelled
from nmid_desktop.core.jobs import CancelToken, run_job
from nmid_desktop.lmm.client import ModelUnavailableError, NoEndpointError
from nmid_desktop.lmm.cost import BudgetExceeded
from nmid_desktop.lmm.describe import QUESTION_SET_META, describe_images
from nmid_desktop.lmm.parsing import REASONING
from nmid_desktop.lmm.questions import QuestionSet, load_question_set, save_question_set

CHAT = "/v1/chat/completions"


def full_answer(qs: QuestionSet) -> str:
    return json.dumps(
        {
            "groups": [
                {
                    "group": g,
                    "reasoning": f"reasoning {g}",
                    "answers": [{"question": q, "answer": f"answer {g}.{q}"} for q in range(1, len(questions) + 1)],
                }
                for g, (_, questions) in enumerate(qs.groups, start=1)
            ]
        }
    )


@pytest.fixture
def answering(server):
    qs = load_question_set()
    server.chat_default = lambda req: chat_reply(full_answer(qs), prompt_tokens=2000, completion_tokens=500)
    return qs


def decode(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_describe_stores_rows_with_model_and_prompt_version(server, library, settings, client, prices, answering) -> None:
    first = library.images()[0]
    batch = run_job(describe_images(library, [first.id], settings, client=client, prices=prices))
    assert not batch.failures and len(batch.descriptions) == 1
    description = batch.descriptions[0]
    assert description.ok and description.description_id is not None
    stored = library.descriptions(first.id)
    assert len(stored) == 1
    record = stored[0]
    assert record.model == "vision-1"
    assert record.prompt_version == f"describe-v1/sem-nanomaterials-v1/{answering.digest}"
    assert len([r for r in record.rows if r.question != REASONING]) == answering.n_questions
    assert (record.rows[0].group, record.rows[0].question, record.rows[0].answer) == ("Basics", REASONING, "reasoning 1")
    assert record.rows[1].question == answering.groups[0][1][0] and record.rows[1].answer == "answer 1.1"
    # cost: 2000 in at $1/M + 500 out at $4/M
    assert library.total_cost() == pytest.approx(0.004)


def test_the_image_arrives_as_a_data_url_with_the_data_bar_cropped(server, library, settings, client, prices, answering) -> None:
    first = library.images()[0]  # 200 x 160, crop box (0, 0, 200, 120)
    settings.lmm.image_detail = "high"
    run_job(describe_images(library, [first.id], settings, client=client, prices=prices))
    sent = server.calls(CHAT)[0]
    urls = sent.image_urls()
    assert len(urls) == 1
    image = decode(urls[0])
    assert image.size == (128, 77)  # 200 x 120 (bar cut off), long side down to image_max_side = 128
    part = [p for p in sent.body["messages"][1]["content"] if p["type"] == "image_url"][0]
    assert part["image_url"]["detail"] == "high"
    assert "Group 10: Context and application" in sent.text()


def test_a_file_outside_the_library_is_described_but_not_stored(server, library, settings, client, prices, answering, tmp_path) -> None:
    path = tmp_path / "outside.png"
    Image.fromarray(grey((90, 60), 7)).save(path)
    batch = run_job(describe_images(library, [path], settings, client=client, prices=prices))
    assert batch.descriptions[0].image_id is None and batch.descriptions[0].item == path
    assert decode(server.calls(CHAT)[0].image_urls()[0]).size == (90, 60)
    assert all(not library.descriptions(i.id) for i in library.images())


def test_a_dry_run_sends_nothing_and_gives_the_estimate(server, library, settings, prices) -> None:
    ids = [i.id for i in library.images()]
    batch = run_job(describe_images(library, ids, settings, dry_run=True, prices=prices))
    assert batch.dry_run and not batch.descriptions
    assert server.requests == []
    assert batch.estimate.calls == 8 and batch.estimate.cost_usd > 0
    assert "about $" in batch.estimate.summary()


def test_the_budget_refuses_a_batch_before_sending(server, library, settings, client, prices) -> None:
    settings.lmm.budget_usd = 0.0001
    with pytest.raises(BudgetExceeded, match="lmm.budget_usd"):
        run_job(describe_images(library, [i.id for i in library.images()], settings, client=client, prices=prices))
    assert server.calls(CHAT) == []


def test_the_budget_stops_a_running_batch_when_real_costs_exceed_the_estimate(server, library, settings, client, prices) -> None:
    qs = load_question_set()
    # Each call reports 1M input tokens ($1): far above its estimate.
    server.chat_default = lambda req: chat_reply(full_answer(qs), prompt_tokens=1_000_000, completion_tokens=10)
    settings.lmm.budget_usd = 1.5
    settings.lmm.max_concurrency = 1
    batch = run_job(describe_images(library, [i.id for i in library.images()], settings, client=client, prices=prices))
    assert batch.stopped == "budget"
    assert len(batch.descriptions) == 2  # the second call was admitted at $1 spent, the third not
    assert len(server.calls(CHAT)) == 2


def test_a_refusal_is_kept_as_a_failed_description_and_still_paid(server, library, settings, client, prices) -> None:
    server.script(CHAT, chat_reply(None, refusal="I can't describe this image.", prompt_tokens=100, completion_tokens=5))
    first = library.images()[0]
    batch = run_job(describe_images(library, [first.id], settings, client=client, prices=prices))
    description = batch.descriptions[0]
    assert not description.ok and "declined" in description.error
    assert library.descriptions(first.id) == []
    assert library.total_cost() > 0


def test_an_unknown_model_stops_the_batch_with_one_message_and_keeps_nothing_wrong(server, library, settings, client, prices) -> None:
    settings.lmm.vision_model = "no-such-model"
    with pytest.raises(ModelUnavailableError, match=r"^setting lmm.vision_model: model 'no-such-model'"):
        run_job(describe_images(library, [i.id for i in library.images()], settings, client=client, prices=prices))
    assert len(server.calls(CHAT)) <= settings.lmm.max_concurrency  # stopped submitting at the first fatal error


def test_a_retired_model_is_refused_before_any_call(server, library, settings, client, prices) -> None:
    settings.lmm.vision_model = "gpt-4-vision-preview"
    with pytest.raises(ModelUnavailableError) as info:
        run_job(describe_images(library, [library.images()[0].id], settings, client=client, prices=prices))
    assert str(info.value) == (
        "setting lmm.vision_model: model 'gpt-4-vision-preview' was shut down on 2024-12-06; "
        "choose another with `nmid models`"
    )
    assert server.calls(CHAT) == []


def test_offline_says_no_endpoint(library, settings, prices, monkeypatch) -> None:
    settings.lmm.base_url = ""
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(NoEndpointError, match="no endpoint configured"):
        run_job(describe_images(library, [library.images()[0].id], settings, prices=prices))
    # ...while a dry run still estimates offline
    assert run_job(describe_images(library, [library.images()[0].id], settings, dry_run=True, prices=prices)).estimate.calls == 1


def test_cancel_keeps_every_finished_description(server, library, settings, client, prices, answering) -> None:
    settings.lmm.max_concurrency = 1
    token = CancelToken()
    ids = [i.id for i in library.images()]

    def on_progress(progress) -> None:
        if progress.data is not None and hasattr(progress.data, "rows"):
            token.cancel()  # after the first finished description

    with pytest.raises(Cancelled):
        run_job(describe_images(library, ids, settings, client=client, prices=prices, token=token), on_progress, token)
    stored = [i for i in ids if library.descriptions(i)]
    assert stored == [ids[0]]
    assert len(server.calls(CHAT)) <= 2


def test_transport_failures_are_per_image_and_the_rest_goes_on(server, library, settings, client, prices, answering) -> None:
    from fake_openai_server import Reply

    settings.lmm.max_concurrency = 1
    server.script(CHAT, Reply(body="{broken"))
    ids = [i.id for i in library.images()][:3]
    batch = run_job(describe_images(library, ids, settings, client=client, prices=prices))
    assert len(batch.failures) == 1 and "not JSON" in batch.failures[0][1]
    assert len(batch.descriptions) == 2


def test_a_cached_description_costs_nothing_the_second_time(server, library, settings, client, prices, answering) -> None:
    first = library.images()[0]
    run_job(describe_images(library, [first.id], settings, client=client, prices=prices))
    spent = library.total_cost()
    batch = run_job(describe_images(library, [first.id], settings, client=client, prices=prices))
    assert batch.descriptions[0].cached
    assert library.total_cost() == spent
    assert len(server.calls(CHAT)) == 1


def test_text_answers_are_parsed_where_structured_outputs_are_missing(server, library, settings, client, prices) -> None:
    server.supports_json_schema = False
    server.chat_default = lambda req: chat_reply("Here you go:\nQ1.1: Particles.\nQ1.2: About 50 nm.\nQ4.1: Grainy.")
    first = library.images()[0]
    batch = run_job(describe_images(library, [first.id], settings, client=client, prices=prices))
    rows = batch.descriptions[0].rows
    assert [r.answer for r in rows] == ["Particles.", "About 50 nm.", "Grainy."]
    assert "response_format" not in server.calls(CHAT)[-1].body


def test_the_library_question_set_is_used(server, library, settings, client, prices) -> None:
    qs = save_question_set(QuestionSet("steel", 1, "steel surfaces", [("Cracks", ["Any cracks?"])]), library.root / "prompts")
    library.set_meta(QUESTION_SET_META, qs.id)
    server.chat_default = lambda req: chat_reply(json.dumps({"groups": [{"group": 1, "reasoning": "r", "answers": [{"question": 1, "answer": "Yes."}]}]}))
    batch = run_job(describe_images(library, [library.images()[0].id], settings, client=client, prices=prices))
    assert batch.descriptions[0].prompt_version.startswith("describe-v1/steel-v1/")
    assert "Group 1: Cracks" in server.calls(CHAT)[0].text()


def test_a_data_bar_on_a_file_from_outside_is_detected_and_cut_off(server, settings, client, prices, answering, tmp_path) -> None:
    import numpy as np

    from nmid_desktop.core.demo import make_demo_image

    image, box = make_demo_image("particles", np.random.default_rng(1), size=256, with_bar=True)
    assert box[3] < 256  # the demo image carries a bar
    path = tmp_path / "sem.png"
    Image.fromarray(image).save(path)
    settings.lmm.image_max_side = 512  # no downscaling: the sent size is the crop itself
    run_job(describe_images(None, [path], settings, client=client, prices=prices))
    sent = decode(server.calls(CHAT)[0].image_urls()[0])
    assert sent.size == (box[2] - box[0], box[3] - box[1])
    assert np.array_equal(np.asarray(sent), image[box[1] : box[3], box[0] : box[2]])
    settings.crop_data_bar = False  # the user's choice: send the full frame
    run_job(describe_images(None, [path], settings, client=client, prices=prices))
    assert decode(server.calls(CHAT)[-1].image_urls()[0]).size == (256, 256)
