"""The API key: where it comes from, where it is stored, and that it never reaches a message."""

from __future__ import annotations

import logging
import os
import stat
import traceback

import keyring
import pytest
from fake_openai_server import error_reply
from keyring.backend import KeyringBackend
from lmm_helpers import SECRET

from nmid_desktop.core.errors import ConfigError
from nmid_desktop.lmm import secrets
from nmid_desktop.lmm.client import EndpointAuthError, LmmError, require_endpoint


class MemoryKeyring(KeyringBackend):
    """A working keyring held in memory (like the OS ones, minus the OS)."""

    priority = 10

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        from keyring.errors import PasswordDeleteError

        if (service, username) not in self.store:
            raise PasswordDeleteError("missing")
        del self.store[(service, username)]


def test_redact_removes_the_key_and_anything_like_a_token() -> None:
    text = f"bad key {SECRET}; header Authorization: Bearer abc.def-123 and sk-otherKEY12345678 api_key=zzz999"
    out = secrets.redact(text, SECRET)
    assert SECRET not in out
    assert "abc.def-123" not in out
    assert "sk-otherKEY12345678" not in out
    assert "zzz999" not in out
    assert "bad key" in out and "[redacted]" in out


def test_redact_leaves_placeholders_and_plain_text_alone() -> None:
    assert secrets.redact("model llava is missing", "x") == "model llava is missing"


def test_environment_key_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "env-key-123456")
    assert secrets.get_api_key() == "env-key-123456"
    assert secrets.key_source() == "environment"


def test_without_keyring_the_key_goes_to_a_private_file_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nmid_desktop.lmm.secrets"):
        where = secrets.store_api_key(SECRET)
    path = secrets.key_file_path()
    assert where == str(path)
    assert "no OS keyring" in caplog.text and SECRET not in caplog.text
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secrets.get_api_key() == SECRET
    assert secrets.key_source() == "file"
    assert secrets.delete_api_key() == [str(path)]
    assert secrets.get_api_key() is None
    assert secrets.key_source() == "none"


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_key_file_others_can_read_is_refused() -> None:
    path = secrets.key_file_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SECRET)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        secrets.get_api_key()
    assert SECRET not in str(info.value)


def test_a_working_keyring_is_used_and_no_file_is_written() -> None:
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    assert secrets.store_api_key(SECRET) == "keyring"
    assert backend.store[(secrets.KEYRING_SERVICE, secrets.KEYRING_USER)] == SECRET
    assert not secrets.key_file_path().exists()
    assert secrets.get_api_key() == SECRET
    assert secrets.key_source() == "keyring"
    assert secrets.delete_api_key() == ["keyring"]
    assert secrets.get_api_key() is None


def test_empty_or_spaced_keys_are_refused() -> None:
    with pytest.raises(ConfigError):
        secrets.store_api_key("  ")
    with pytest.raises(ConfigError):
        secrets.store_api_key("two words")


def test_endpoint_repr_hides_the_key(settings) -> None:
    endpoint = require_endpoint(settings.lmm)
    assert endpoint.api_key == SECRET
    assert SECRET not in repr(endpoint)


@pytest.mark.parametrize("status", [401, 400, 500])
def test_a_server_echoing_the_authorization_header_never_leaks_the_key(server, client, status) -> None:
    """The fake server puts the Authorization header in its error body; the key must not reach the message."""
    echo = lambda req: error_reply(status, f"rejected request with {req.headers.get('authorization')}")  # noqa: E731
    server.script("/v1/chat/completions", echo, echo, echo)
    with pytest.raises(LmmError) as info:
        client.chat({"model": "vision-1", "messages": [{"role": "user", "content": "hi"}]})
    exc = info.value
    assert server.calls("/v1/chat/completions")[0].headers["authorization"] == f"Bearer {SECRET}"
    assert "rejected request with" in str(exc)  # the server's words are kept...
    assert SECRET not in str(exc)  # ...but not the key
    assert SECRET not in repr(exc)
    assert SECRET not in "".join(traceback.format_exception(exc))
    assert exc.__cause__ is None and exc.__context__ is None  # the openai exception is not even chained
    if status == 401:
        assert isinstance(exc, EndpointAuthError) and "nmid api-key set" in str(exc)


def test_the_key_is_not_in_the_cache(client, tmp_path) -> None:
    client.chat({"model": "vision-1", "messages": [{"role": "user", "content": "hi"}]})
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 1
    assert SECRET not in files[0].read_text()
