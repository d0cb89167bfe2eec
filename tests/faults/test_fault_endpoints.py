"""Endpoints: hostile or odd servers end in one clear LmmError, within a deadline, and cancel works."""

from __future__ import annotations

import threading
import time

import pytest
from fake_openai_server import Reply, chat_reply, drip_reply, html_reply

from nmid_desktop.core.errors import Cancelled
from nmid_desktop.core.jobs import CancelToken
from nmid_desktop.lmm.client import (
    DeadlineExceededError,
    LmmClient,
    LmmError,
    MalformedResponseError,
    require_endpoint,
)

CHAT = "/v1/chat/completions"
MODELS = "/v1/models"
IMAGES = "/v1/images/generations"


def hello(model: str = "vision-1") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


# ----------------------------------------------------------------------------- bodies that are not JSON

@pytest.mark.parametrize("path", [CHAT, MODELS, IMAGES])
def test_an_html_page_with_200_is_a_clear_error_on_every_route(server, client, path) -> None:
    server.script(path, html_reply())
    with pytest.raises(MalformedResponseError) as info:
        if path == CHAT:
            client.chat(hello())
        elif path == MODELS:
            client.list_models()
        else:
            client.generate_images({"model": "image-1", "prompt": "x", "n": 1, "size": "1024x1024"})
    message = str(info.value)
    assert "not JSON" in message and "text/html" in message and "proxy or captive portal" in message
    assert "lmm.base_url" in message
    assert len(server.calls(path)) == 1  # not retried: a paid call must not be paid twice


@pytest.mark.parametrize("body", [[1, 2, 3], "\"just a string\"", "null", "42", b"\xff\xfe\x00garbage"])
def test_json_that_is_not_an_object_is_a_clear_error(server, client, body) -> None:
    server.script(CHAT, Reply(body=body))
    with pytest.raises(MalformedResponseError, match="not JSON|not an object"):
        client.chat(hello())


def test_an_unusable_answer_is_not_cached(server, client, cache) -> None:
    server.script(CHAT, html_reply(), chat_reply("fine now"))
    with pytest.raises(MalformedResponseError):
        client.chat(hello())
    assert len(cache) == 0
    assert client.chat(hello()).text == "fine now"


@pytest.mark.parametrize(
    "choices",
    [[], ["a string"], [{"message": "not a dict"}], [{"message": {"content": 5}, "finish_reason": 7}]],
)
def test_odd_chat_shapes_never_end_in_a_traceback(server, client, choices) -> None:
    server.script(CHAT, Reply(body={"choices": choices, "usage": {"prompt_tokens": "many", "completion_tokens": 1e400}}))
    try:
        result = client.chat(hello())
    except LmmError as exc:
        assert "chat" in str(exc)
    else:
        assert result.text == "" and result.tokens_in == 0


# ----------------------------------------------------------------------------- total deadline, cancel

def test_a_server_dripping_bytes_is_cut_off_by_the_total_timeout(server, settings) -> None:
    settings.lmm.timeout_s = 1.0  # each read gets a byte every 0.3 s: a per-read timeout never fires
    settings.lmm.max_retries = 0
    server.script(CHAT, drip_reply(chat_reply("x" * 200).body, every_s=0.3))
    with LmmClient(require_endpoint(settings.lmm), backoff_s=0.01) as client:
        start = time.monotonic()
        with pytest.raises(LmmError, match=r"did not answer within 1 s \(1 try; setting lmm.timeout_s\)"):
            client.chat(hello())
        assert time.monotonic() - start < 3.0


def test_retries_are_bounded_by_the_request_deadline(server, settings) -> None:
    settings.lmm.timeout_s = 0.5
    settings.lmm.max_retries = 10
    settings.lmm.deadline_s = 1.2
    server.script(CHAT, *[Reply(body={}, delay_s=5)] * 11)
    with LmmClient(require_endpoint(settings.lmm), backoff_s=0.05) as client:
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError, match=r"within 1.2 s .*setting lmm.deadline_s"):
            client.chat(hello())
        assert time.monotonic() - start < 2.5
    assert len(server.calls(CHAT)) <= 3


def test_cancel_works_while_a_request_is_waiting_for_the_server(server, settings) -> None:
    settings.lmm.timeout_s = 30.0
    server.script(CHAT, Reply(body={}, delay_s=20))
    token = CancelToken()
    threading.Timer(0.3, token.cancel).start()
    with LmmClient(require_endpoint(settings.lmm), backoff_s=0.01) as client:
        start = time.monotonic()
        with pytest.raises(Cancelled):
            client.chat(hello(), token=token)
        assert time.monotonic() - start < 2.0


def test_cancel_works_while_a_body_drips(server, settings) -> None:
    settings.lmm.timeout_s = 30.0
    server.script(CHAT, drip_reply(chat_reply("y" * 100).body, every_s=0.2))
    token = CancelToken()
    threading.Timer(0.5, token.cancel).start()
    with LmmClient(require_endpoint(settings.lmm), backoff_s=0.01) as client:
        start = time.monotonic()
        with pytest.raises(Cancelled):
            client.chat(hello(), token=token)
        assert time.monotonic() - start < 2.0


def test_a_retry_after_longer_than_the_deadline_is_not_waited_for(server, settings) -> None:
    settings.lmm.deadline_s = 1.0
    server.script(CHAT, Reply(status=503, body={"error": {"message": "busy"}}, headers={"Retry-After": "30"}))
    with LmmClient(require_endpoint(settings.lmm), backoff_s=0.01, backoff_max_s=60.0) as client:
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.chat(hello())
        assert time.monotonic() - start < 1.5


# ----------------------------------------------------------------------------- odd /models answers

@pytest.mark.parametrize(
    "data",
    [
        ["not-an-object", 5, None, {"id": "vision-1"}],
        [{"id": "vision-1", "shutdown_date": 253402300800 * 1000}],  # milliseconds: year 10000+
        [{"id": "vision-1", "shutdown_date": "99999-12-31"}],
        [{"id": "vision-1", "shutdown_date": 1e300, "created": float("1e300")}],
        [{"id": "vision-1", "created": "yesterday", "owned_by": None}],
        [{"id": None}, {"no-id": True}, {"id": "vision-1", "shutdown_date": True}],
    ],
)
def test_odd_models_entries_are_skipped_or_read_never_a_traceback(server, client, data) -> None:
    from nmid_desktop.lmm.catalog import list_models

    server.script(MODELS, Reply(body={"object": "list", "data": data}))
    models = list_models(client)
    assert [m.id for m in models] == ["vision-1"]


def test_models_without_a_data_list_is_a_clear_error(server, client) -> None:
    server.script(MODELS, Reply(body={"object": "list", "data": "nope"}))
    with pytest.raises(MalformedResponseError, match="'data' list"):
        client.list_models()


# ----------------------------------------------------------------------------- a batch meets a proxy page

def test_a_describe_batch_hit_by_an_html_page_keeps_what_was_paid(server, library, settings, client, prices) -> None:
    import json as _json

    from nmid_desktop.core.jobs import run_job
    from nmid_desktop.lmm.describe import describe_images
    from nmid_desktop.lmm.questions import load_question_set

    qs = load_question_set()
    answer = _json.dumps({
        "groups": [
            {"group": g, "reasoning": "r", "answers": [{"question": q, "answer": "a"} for q in range(1, len(questions) + 1)]}
            for g, (_, questions) in enumerate(qs.groups, start=1)
        ]
    })
    settings.lmm.max_concurrency = 1
    ids = [im.id for im in library.images()[:3]]
    server.script(CHAT, chat_reply(answer), html_reply(), chat_reply(answer))
    batch = run_job(describe_images(library, ids, settings, client=client, prices=prices))
    assert len(batch.failures) == 1 and "not JSON" in batch.failures[0][1]
    assert sum(1 for d in batch.descriptions if d.ok) == 2
    assert sum(len(library.descriptions(i)) for i in ids) == 2  # stored, not dropped
