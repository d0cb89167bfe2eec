"""The API key: from the environment, the OS keyring, or (last resort) a private file.

The key is a secret. It is never written to the settings file, the library, the
cache, an export or a log line, and :func:`redact` takes it (and anything that
looks like a bearer token) out of every error text before a user sees it.

Where it is looked up, first hit wins:

1. ``OPENAI_API_KEY`` in the environment (the standard variable of every OpenAI client);
2. the OS keyring (Windows Credential Manager, macOS Keychain, Secret Service on
   Linux) through the ``keyring`` package;
3. a file ``api-key`` in the config folder, readable only by the user (mode 0600).
   It is used only where no keyring backend exists (a headless Linux box), and
   storing the key there logs a warning, because a file is weaker than a keyring.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

from nmid_desktop.core.errors import ConfigError
from nmid_desktop.core.fileio import atomic_write_text
from nmid_desktop.core.paths import config_dir

log = logging.getLogger(__name__)

ENV_VAR = "OPENAI_API_KEY"
KEYRING_SERVICE = "nmid-desktop"
KEYRING_USER = "openai-api-key"
KEY_FILE = "api-key"

# Shorter "keys" are placeholders local servers accept ("ollama", "x"); redacting them
# would mangle ordinary words in messages and protect nothing.
_MIN_REDACT_LEN = 6
# Anything that looks like a bearer credential, whoever's key it is.
_TOKEN_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s'\",}]+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(api[-_ ]?key[\"']?\s*[:=]\s*[\"']?)[^\s'\",}]+"),
)
REDACTED = "[redacted]"
# A run of this many characters of the key anywhere in a text is taken out: a server that
# echoes a header split at a CR/LF or a quote shows the key in pieces, not whole.
_FRAGMENT_LEN = 8
_MAX_KEY_LEN = 4096
_FORBIDDEN_IN_KEY = {"\"": "a double quote", "'": "a quote", "`": "a backquote", "\\": "a backslash"}


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an API key (never quoting it), or None when it can.

    Keys travel in an HTTP header: one line of printable ASCII. A key pasted with a
    line break, quotes or a non-ASCII character (a typographic dash) would break the
    header, or be cut at the break and leak in pieces into an echoed error.
    """
    if len(key) > _MAX_KEY_LEN:
        return f"it is {len(key)} characters long (at most {_MAX_KEY_LEN})"
    for position, ch in enumerate(key, start=1):
        if ch in "\r\n":
            return f"it contains a line break at character {position}"
        if ch in _FORBIDDEN_IN_KEY:
            return f"it contains {_FORBIDDEN_IN_KEY[ch]} at character {position}"
        if ch.isspace():
            return f"it contains a space at character {position}"
        if not ch.isascii():
            return f"it contains a non-ASCII character (U+{ord(ch):04X}) at character {position}"
        if not ch.isprintable():
            return f"it contains a control character at character {position}"
    return None


def validate_api_key(key: str, source: str) -> str:
    """Return ``key`` stripped, or raise naming where it came from and what is wrong.

    Args:
        key: The key as typed or read.
        source: Where it came from, for the message (``OPENAI_API_KEY``, ``the OS keyring``...).

    Raises:
        ConfigError: If the key is empty or cannot travel in an HTTP header.
    """
    key = key.strip()
    if not key:
        raise ConfigError(f"the API key from {source} is empty")
    problem = key_problem(key)
    if problem:
        raise ConfigError(
            f"the API key from {source} is not usable: {problem}. A key is one line of printable ASCII "
            "without quotes or spaces: copy it again from the provider's page"
        )
    return key


def _redact_fragments(text: str, secret: str) -> str:
    """Replace every run of at least ``_FRAGMENT_LEN`` characters that also occurs in ``secret``."""
    if len(secret) < _FRAGMENT_LEN or len(text) < _FRAGMENT_LEN:
        return text
    grams = {secret[i : i + _FRAGMENT_LEN] for i in range(len(secret) - _FRAGMENT_LEN + 1)}
    covered = [False] * len(text)
    for i in range(len(text) - _FRAGMENT_LEN + 1):
        if text[i : i + _FRAGMENT_LEN] in grams:
            for j in range(i, i + _FRAGMENT_LEN):
                covered[j] = True
    if not any(covered):
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append(REDACTED)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def redact(text: str, *secrets: str | None) -> str:
    """Remove secrets, bearer tokens and ``sk-`` keys from a text meant for people.

    Args:
        text: Any message, e.g. an HTTP error body.
        *secrets: Exact strings to remove (the key in use); None and short values are ignored.

    Returns:
        The text with every secret, and every run of 8 or more of its characters,
        replaced by ``[redacted]``.
    """
    out = str(text)
    for secret in secrets:
        if secret and len(secret) >= _MIN_REDACT_LEN:
            out = out.replace(secret, REDACTED)
            # Pieces of it, e.g. both halves of a key split at a line break or a quote.
            for piece in re.split(r"[\s'\"`\\]+", secret):
                if len(piece) >= _MIN_REDACT_LEN:
                    out = out.replace(piece, REDACTED)
            out = _redact_fragments(out, secret)
    for pattern in _TOKEN_PATTERNS:
        if pattern.groups:
            out = pattern.sub(lambda m: m.group(1) + REDACTED, out)
        else:
            out = pattern.sub(REDACTED, out)
    return out


def key_file_path() -> Path:
    """Where the fallback key file lives (it may not exist)."""
    return config_dir() / KEY_FILE


def _keyring_usable() -> bool:
    """True when a real keyring backend is installed (not keyring's 'fail' or 'null' one)."""
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
    except Exception:  # noqa: BLE001 - a broken keyring install must not stop the app
        return False
    if isinstance(backend, fail.Keyring):
        return False
    try:
        from keyring.backends import null

        if isinstance(backend, null.Keyring):
            return False
    except ImportError:  # pragma: no cover - old keyring without the null backend
        pass
    return getattr(backend, "priority", 1) > 0


def _read_key_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    if os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            # Refuse a key others can read: the user should know, and fix the mode.
            raise ConfigError(
                f"{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` or store the key again"
            )
    try:
        key = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"the API key file {path} is not UTF-8 text; store the key again") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the API key file {path}: {exc.strerror}") from None
    return validate_api_key(key, str(path)) if key else None


def get_api_key() -> str | None:
    """The API key from the environment, the keyring or the key file; None when there is none."""
    key = os.environ.get(ENV_VAR, "").strip()
    if key:
        return validate_api_key(key, ENV_VAR)
    if _keyring_usable():
        import keyring

        try:
            key = keyring.get_password(KEYRING_SERVICE, KEYRING_USER) or ""
        except Exception as exc:  # noqa: BLE001 - e.g. a locked Secret Service
            log.warning("cannot read the OS keyring (%s); trying the key file", type(exc).__name__)
            key = ""
        if key.strip():
            return validate_api_key(key, "the OS keyring")
    return _read_key_file(key_file_path())


def key_source() -> str:
    """Where the key would come from: ``environment``, ``keyring``, ``file`` or ``none`` (never the key)."""
    if os.environ.get(ENV_VAR, "").strip():
        return "environment"
    if _keyring_usable():
        import keyring

        try:
            if (keyring.get_password(KEYRING_SERVICE, KEYRING_USER) or "").strip():
                return "keyring"
        except Exception:  # noqa: BLE001
            pass
    try:
        if _read_key_file(key_file_path()):
            return "file"
    except ConfigError:
        return "file"
    return "none"


def _write_private_file(path: Path, text: str) -> None:
    """Write ``text`` so that only the user can read it, atomically."""
    atomic_write_text(path, text, private=True)


def store_api_key(key: str) -> str:
    """Save the key in the OS keyring, or in a private file where no keyring exists.

    Args:
        key: The API key.

    Returns:
        ``"keyring"`` or the path of the key file, to tell the user where it went.

    Raises:
        ConfigError: If the key is empty, or has line breaks, quotes, spaces or non-ASCII characters.
    """
    key = validate_api_key(key, "the typed key")
    if _keyring_usable():
        import keyring

        try:
            keyring.set_password(KEYRING_SERVICE, KEYRING_USER, key)
            return "keyring"
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot write to the OS keyring (%s); using a private file instead", type(exc).__name__)
    path = key_file_path()
    _write_private_file(path, key + "\n")
    log.warning(
        "no OS keyring is available: the API key was saved in %s, readable only by you. "
        "A keyring (or the OPENAI_API_KEY variable) is safer.",
        path,
    )
    return str(path)


def delete_api_key() -> list[str]:
    """Remove a stored key from the keyring and the key file.

    Returns:
        Where a key was removed from (``"keyring"`` and/or the file path); the
        environment variable is the user's to unset.
    """
    removed: list[str] = []
    if _keyring_usable():
        import keyring
        from keyring.errors import PasswordDeleteError

        try:
            keyring.delete_password(KEYRING_SERVICE, KEYRING_USER)
            removed.append("keyring")
        except PasswordDeleteError:
            pass
    path = key_file_path()
    if path.exists():
        path.unlink()
        removed.append(str(path))
    return removed
