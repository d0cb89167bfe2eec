"""Endpoints: only usable answers are cached; a refresh re-asks; `nmid cache clear` empties the cache."""

from __future__ import annotations

import os
import subprocess
import sys

from fake_openai_server import Reply, chat_reply, error_reply

from nmid_desktop.lmm.cache import ResponseCache, request_key
from nmid_desktop.lmm.client import LmmClient, require_endpoint

CHAT = "/v1/chat/completions"


def hello() -> dict:
    return {"model": "vision-1", "messages": [{"role": "user", "content": "hello"}]}


def test_a_refusal_is_returned_but_not_cached(server, client, cache) -> None:
    server.script(CHAT, chat_reply(None, refusal="I cannot help with that."), chat_reply("crazing"))
    assert client.chat(hello()).refused
    assert len(cache) == 0
    second = client.chat(hello())
    assert second.text == "crazing" and not second.cached
    assert client.chat(hello()).cached  # the usable answer is kept
    assert len(server.calls(CHAT)) == 2


def test_empty_and_filtered_answers_are_not_cached(server, client, cache) -> None:
    server.script(CHAT, chat_reply(""), chat_reply("x", finish_reason="content_filter"), chat_reply("ok"))
    client.chat(hello())
    client.chat(hello())
    assert len(cache) == 0
    assert client.chat(hello()).text == "ok"
    assert len(cache) == 1


def test_an_unusable_entry_already_in_the_cache_is_asked_again(server, settings, cache) -> None:
    key = request_key(server.base_url, "chat", hello())
    cache.put(key, chat_reply(None, refusal="old refusal").body)  # written by an older version
    with LmmClient(require_endpoint(settings.lmm), cache=cache, backoff_s=0.01) as client:
        assert client.chat(hello()).text == "ok"
    assert len(server.calls(CHAT)) == 1


def test_refresh_asks_again_and_replaces_the_entry(server, settings, cache) -> None:
    server.script(CHAT, chat_reply("first"), chat_reply("second"))
    with LmmClient(require_endpoint(settings.lmm), cache=cache, backoff_s=0.01) as client:
        assert client.chat(hello()).text == "first"
        assert client.chat(hello()).cached
    with LmmClient.from_settings(settings.lmm, cache=cache, backoff_s=0.01, refresh=True) as client:
        fresh = client.chat(hello())
        assert fresh.text == "second" and not fresh.cached
    with LmmClient(require_endpoint(settings.lmm), cache=cache, backoff_s=0.01) as client:
        assert client.chat(hello()).text == "second"


def test_a_failed_call_leaves_no_entry(server, client, cache) -> None:
    server.script(CHAT, error_reply(400, "bad"), Reply(body={"choices": []}))
    for _ in range(2):
        try:
            client.chat(hello())
        except Exception:  # noqa: BLE001 - only the cache matters here
            pass
    assert len(cache) == 0


def test_clear_removes_entries_and_leftover_temporary_files(tmp_path) -> None:
    cache = ResponseCache(tmp_path / "c")
    for i in range(3):
        cache.put(request_key("http://x", "chat", {"i": i}), {"choices": []})
    leftover = next((tmp_path / "c").glob("??")) / ".abc.json-123.tmp"  # a write killed half-way
    leftover.write_text("{")
    unrelated = tmp_path / "c" / "README.txt"
    unrelated.write_text("keep me")
    assert cache.clear() == 3
    assert len(cache) == 0 and not leftover.exists() and unrelated.exists()


def test_nmid_cache_clear_command(tmp_path) -> None:
    env = dict(os.environ)
    cache = ResponseCache(tmp_path / "nmid_cache_dir" / "lmm")
    env["NMID_CACHE_DIR"] = str(tmp_path / "nmid_cache_dir")
    cache.put(request_key("http://x", "chat", {"a": 1}), {"choices": []})
    run = subprocess.run(
        [sys.executable, "-m", "nmid_desktop.cli", "cache", "clear"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "removed 1 cached answers" in run.stdout
    assert len(cache) == 0
