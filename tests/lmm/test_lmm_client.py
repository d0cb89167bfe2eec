"""The client against a real HTTP server: endpoint resolution, retries, timeouts, faults, cache, batches."""

from __future__ import annotations

import threading
import time

import pytest
from fake_openai_server import Reply, chat_reply, error_reply
from lmm_helpers import SECRET

from nmid_desktop.core.config import LmmSettings
from nmid_desktop.core.errors import Cancelled
from nmid_desktop.core.jobs import CancelToken
from nmid_desktop.lmm.cache import ResponseCache, request_key
from nmid_desktop.lmm.client import (
    NO_KEY,
    OPENAI_URL,
    EndpointAuthError,
    EndpointUnreachableError,
    LmmClient,
    LmmError,
    MalformedResponseError,
    ModelUnavailableError,
    NoEndpointError,
    require_endpoint,
    resolve_endpoint,
    retry_after_s,
    run_batch,
)

CHAT = "/v1/chat/completions"


def hello(model: str = "vision-1") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


# ----------------------------------------------------------------------------- endpoint

def test_offline_is_a_normal_state_with_a_clear_message() -> None:
    assert resolve_endpoint(LmmSettings()) is None
    with pytest.raises(NoEndpointError, match="no endpoint configured") as info:
        require_endpoint(LmmSettings())
    assert "OPENAI_BASE_URL" in str(info.value) and "offline" in str(info.value)


def test_environment_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    endpoint = require_endpoint(LmmSettings())
    assert endpoint.base_url == "http://127.0.0.1:9/v1"
    assert endpoint.api_key == NO_KEY and endpoint.is_local  # a local server needs no key
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abcdefgh12345678")
    endpoint = require_endpoint(LmmSettings())
    assert endpoint.base_url == OPENAI_URL and endpoint.key_source == "environment"
    assert not endpoint.is_local


def test_setting_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://elsewhere:1/v1")
    endpoint = require_endpoint(LmmSettings(base_url="http://localhost:11434/v1", timeout_s=7.0))
    assert endpoint.base_url == "http://localhost:11434/v1" and endpoint.timeout_s == 7.0


def test_a_local_server_without_key_gets_a_placeholder_key(server, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with LmmClient(require_endpoint(LmmSettings(base_url=server.base_url))) as client:
        assert client.chat(hello()).text == "ok"
    assert server.calls(CHAT)[0].headers["authorization"] == f"Bearer {NO_KEY}"


# ----------------------------------------------------------------------------- calls

def test_chat_returns_text_and_usage(server, client) -> None:
    server.script(CHAT, chat_reply("the answer", prompt_tokens=321, completion_tokens=12))
    result = client.chat(hello())
    assert (result.text, result.tokens_in, result.tokens_out, result.cached) == ("the answer", 321, 12, False)
    sent = server.calls(CHAT)[0]
    assert sent.body["model"] == "vision-1"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"


def test_models_are_listed_with_shutdown_dates(client) -> None:
    models = {m["id"]: m for m in client.list_models()}
    assert models["gpt-4-vision-preview"]["shutdown_date"] == "2024-12-06"
    assert models["vision-1"].get("shutdown_date") is None


def test_429_with_retry_after_is_retried_after_the_asked_wait(server, client) -> None:
    server.script(CHAT, error_reply(429, "slow down", headers={"Retry-After": "1"}), chat_reply("ok"))
    start = time.monotonic()
    assert client.chat(hello()).text == "ok"
    elapsed = time.monotonic() - start
    assert len(server.calls(CHAT)) == 2
    assert elapsed >= 0.95  # Retry-After (1 s) beat the 10 ms backoff


def test_retry_after_ms_and_dates_are_read() -> None:
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after_s({}) is None


def test_500_is_retried_then_succeeds(server, client) -> None:
    server.script(CHAT, error_reply(500, "boom"), error_reply(503, "busy", headers={"Retry-After": "0"}), chat_reply("ok"))
    assert client.chat(hello()).text == "ok"
    assert len(server.calls(CHAT)) == 3


def test_500_beyond_the_retries_gives_one_clear_error(server, client) -> None:
    server.script(CHAT, *[error_reply(500, "boom")] * 3)
    with pytest.raises(LmmError, match=r"failed with 500 after 3 tries: boom"):
        client.chat(hello())
    assert len(server.calls(CHAT)) == 3  # max_retries = 2


def test_a_hang_past_the_timeout_is_retried_and_reported(server, settings, tmp_path) -> None:
    settings.lmm.timeout_s = 0.3
    settings.lmm.max_retries = 1
    server.script(CHAT, Reply(body={}, delay_s=3), Reply(body={}, delay_s=3))
    with LmmClient(require_endpoint(settings.lmm), backoff_s=0.01) as client:
        start = time.monotonic()
        with pytest.raises(LmmError, match=r"did not answer within 0.3 s \(2 tries; setting lmm.timeout_s\)"):
            client.chat(hello())
        assert time.monotonic() - start < 2.5
    assert len(server.calls(CHAT)) == 2


def test_a_hang_then_an_answer_succeeds(server, settings) -> None:
    settings.lmm.timeout_s = 0.3
    server.script(CHAT, Reply(body={}, delay_s=3), chat_reply("late but fine"))
    with LmmClient(require_endpoint(settings.lmm), backoff_s=0.01) as client:
        assert client.chat(hello()).text == "late but fine"


def test_malformed_json_is_an_error_and_not_retried(server, client) -> None:
    server.script(CHAT, Reply(body="{not json at all"))
    with pytest.raises(MalformedResponseError, match="not JSON"):
        client.chat(hello())
    assert len(server.calls(CHAT)) == 1  # the call may have been charged: never sent twice


def test_a_body_without_choices_is_malformed(server, client) -> None:
    server.script(CHAT, Reply(body={"object": "chat.completion"}))
    with pytest.raises(MalformedResponseError, match="without a chat message"):
        client.chat(hello())


def test_an_unknown_model_names_the_setting(server, client) -> None:
    with pytest.raises(ModelUnavailableError) as info:
        client.chat(hello("no-such-model"), setting="lmm.vision_model")
    message = str(info.value)
    assert message.startswith("setting lmm.vision_model: model 'no-such-model' is not available")
    assert "nmid models" in message
    assert info.value.fatal
    assert len(server.calls(CHAT)) == 1  # a 404 is not retried


def test_insufficient_quota_is_not_retried(server, client) -> None:
    server.script(CHAT, error_reply(429, "You exceeded your current quota", code="insufficient_quota"))
    with pytest.raises(EndpointAuthError, match="quota"):
        client.chat(hello())
    assert len(server.calls(CHAT)) == 1


def test_an_unreachable_server_is_fatal_and_named(settings) -> None:
    settings.lmm.base_url = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    settings.lmm.max_retries = 1
    with LmmClient(require_endpoint(settings.lmm), backoff_s=0.01) as client:
        with pytest.raises(EndpointUnreachableError, match="cannot reach http://127.0.0.1:9/v1") as info:
            client.chat(hello())
    assert info.value.fatal


def test_a_huge_retry_after_is_reported_not_obeyed(server, client) -> None:
    server.script(CHAT, error_reply(429, "slow", headers={"Retry-After": "3600"}))
    with pytest.raises(LmmError, match="asks to wait 3600 s"):
        client.chat(hello())


def test_cancel_ends_a_retry_wait(server, client) -> None:
    server.script(CHAT, error_reply(429, "slow", headers={"Retry-After": "30"}))
    client.backoff_max_s = 60
    token = CancelToken()
    threading.Timer(0.2, token.cancel).start()
    start = time.monotonic()
    with pytest.raises(Cancelled):
        client.chat(hello(), token=token)
    assert time.monotonic() - start < 2


# ----------------------------------------------------------------------------- structured outputs

def test_structured_outputs_are_sent_as_json_schema(server, client) -> None:
    client.chat_structured(hello(), "answer", {"type": "object"})
    sent = server.calls(CHAT)[0].body
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["name"] == "answer"
    assert client.structured_outputs_ok is True


def test_a_server_without_structured_outputs_gets_plain_requests(server, client) -> None:
    server.supports_json_schema = False
    assert client.chat_structured(hello(), "answer", {"type": "object"}).text == "ok"
    calls = server.calls(CHAT)
    assert len(calls) == 2 and "response_format" in calls[0].body and "response_format" not in calls[1].body
    assert client.structured_outputs_ok is False
    client.chat_structured({**hello(), "messages": [{"role": "user", "content": "again"}]}, "answer", {"type": "object"})
    assert len(server.calls(CHAT)) == 3  # remembered: no second rejected try


# ----------------------------------------------------------------------------- cache

def test_the_same_request_is_never_paid_twice(server, client, tmp_path) -> None:
    first = client.chat(hello())
    second = client.chat(hello())
    assert not first.cached and second.cached and second.text == first.text
    assert len(server.calls(CHAT)) == 1
    client.chat({**hello(), "messages": [{"role": "user", "content": "different"}]})
    assert len(server.calls(CHAT)) == 2
    files = list((tmp_path / "cache").rglob("*"))
    assert not [f for f in files if f.name.startswith(".tmp-")]  # atomic writes leave no temp files


def test_errors_are_not_cached(server, client) -> None:
    server.script(CHAT, *[error_reply(500, "boom")] * 3)
    with pytest.raises(LmmError):
        client.chat(hello())
    assert client.chat(hello()).text == "ok"
    assert len(server.calls(CHAT)) == 4


def test_cache_key_covers_endpoint_and_request(tmp_path) -> None:
    a = request_key("http://a/v1", "chat", hello())
    assert a == request_key("http://a/v1/", "chat", hello())
    assert a != request_key("http://b/v1", "chat", hello())
    assert a != request_key("http://a/v1", "chat", hello("other"))
    cache = ResponseCache(tmp_path)
    cache.put(a, {"x": 1})
    assert cache.get(a) == {"x": 1} and a in cache
    (tmp_path / a[:2] / f"{a}.json").write_text("{broken")
    assert cache.get(a) is None  # a damaged entry is a miss, not a crash


# ----------------------------------------------------------------------------- batches

def test_run_batch_limits_concurrency_and_yields_every_result() -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def work(x: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        if x == 3:
            raise ValueError("bad item")
        return x * x

    outcomes = list(run_batch(list(range(8)), work, max_workers=3))
    assert peak <= 3
    assert sorted(o.index for o in outcomes) == list(range(8))
    by_index = {o.index: o for o in outcomes}
    assert by_index[5].value == 25 and isinstance(by_index[3].error, ValueError)


def test_run_batch_stops_submitting_when_admit_refuses_or_cancelled() -> None:
    outcomes = list(run_batch(list(range(10)), lambda x: x, max_workers=2, admit=lambda i: i < 4))
    assert sorted(o.index for o in outcomes) == [0, 1, 2, 3]
    token = CancelToken()
    seen = []
    for outcome in run_batch(list(range(10)), lambda x: x, max_workers=1, token=token):
        seen.append(outcome.index)
        token.cancel()
    assert seen == [0]
