"""Secrets: keys validated when set or read, redaction of any fragment, no plain http to other hosts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from lmm_helpers import SECRET

from nmid_desktop.core.config import LmmSettings
from nmid_desktop.core.errors import ConfigError
from nmid_desktop.lmm.client import InsecureEndpointError, LmmClient, require_endpoint
from nmid_desktop.lmm.secrets import REDACTED, get_api_key, key_file_path, redact, store_api_key

BAD_KEYS = [
    ("sk-proj-abc123\r\nX-Evil: 1", "line break"),
    ("sk-proj-abc123\ndef456ghi", "line break"),
    ('sk-proj-"abc123def456"', "double quote"),
    ("sk-proj-'abc123def456'", "quote"),
    ("sk\u2013proj\u2013abc123def456", "non-ASCII"),  # an en dash from a word processor
    ("sk-proj-abc\x00123def456", "control character"),
    ("sk-proj-abc 123def456", "space"),
]


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS)
def test_a_bad_key_is_refused_when_stored_and_never_echoed(key: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        store_api_key(key)
    assert "abc123" not in str(info.value)
    assert not key_file_path().exists()


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS[:5])
def test_a_bad_key_in_the_environment_is_a_clear_error_naming_the_variable(monkeypatch, key, reason) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with pytest.raises(ConfigError, match=f"OPENAI_API_KEY is not usable: .*{reason}"):
        get_api_key()


def test_a_bad_key_in_the_key_file_is_a_clear_error(monkeypatch) -> None:
    path = key_file_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("sk-abc\u00e9def123456\n", encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="non-ASCII"):
        get_api_key()


def test_nmid_models_with_a_non_ascii_key_ends_in_one_line_not_a_traceback(server, tmp_path) -> None:
    env = dict(os.environ, OPENAI_API_KEY="sk-\u00fcber-secret-0123456789", OPENAI_BASE_URL=server.base_url)
    run = subprocess.run([sys.executable, "-m", "nmid_desktop.cli", "models"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr and "OPENAI_API_KEY" in run.stderr and "non-ASCII" in run.stderr
    assert "0123456789" not in run.stderr
    assert server.calls("/v1/models") == []


def test_fragments_of_the_key_are_redacted() -> None:
    key = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
    echoed = f"bad header: Authorization: B {key[:20]}\r\n{key[20:]}' and again '{key[5:30]}"
    out = redact(echoed, key)
    for i in range(len(key) - 7):
        assert key[i : i + 8] not in out
    assert REDACTED in out and out.startswith("bad header")


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=16, max_size=80),
    cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=3),
    glue=st.sampled_from(["\r\n", "'", '"', " ", "\\", ", "]),
    prefix=st.text(max_size=20),
)
def test_no_run_of_eight_key_characters_survives_redaction(key: str, cuts: list[int], glue: str, prefix: str) -> None:
    points = sorted({c % len(key) for c in cuts})
    pieces = [key[a:b] for a, b in zip([0, *points], [*points, len(key)])]
    out = redact(prefix + glue.join(pieces), key)
    for piece in pieces:
        for i in range(len(piece) - 7):
            assert piece[i : i + 8] not in out


# ----------------------------------------------------------------------------- plain http

@pytest.mark.parametrize("url", ["http://10.1.2.3:8000/v1", "http://gpu-server.lab.example/v1", "http://192.168.0.7/v1"])
def test_plain_http_to_another_host_is_refused_naming_the_setting(monkeypatch, url: str) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with pytest.raises(InsecureEndpointError, match="lmm.allow_insecure_http = true") as info:
        LmmClient.from_settings(LmmSettings(base_url=url), cache=False)
    assert SECRET not in str(info.value)


def test_consent_in_settings_allows_plain_http_to_a_lab_server(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    client = LmmClient.from_settings(LmmSettings(base_url="http://10.1.2.3:8000/v1", allow_insecure_http=True), cache=False)
    client.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/v1", "http://127.5.6.7:9/v1", "http://localhost:11434/v1", "http://[::1]:8000/v1", "https://api.example.com/v1"])
def test_loopback_and_https_need_no_consent(url: str) -> None:
    endpoint = require_endpoint(LmmSettings(base_url=url))
    endpoint.check_transport()


def test_the_setting_is_read_from_the_settings_file(tmp_path) -> None:
    from nmid_desktop.core.config import load_settings

    path = tmp_path / "settings.toml"
    path.write_text('[lmm]\nbase_url = "http://10.0.0.5/v1"\nallow_insecure_http = true\n', encoding="utf-8")
    assert load_settings(path).lmm.allow_insecure_http is True
