"""Where a library lives: a folder (SQLite) or a ``postgresql://`` URL, and how to show it.

A URL may carry a password (``postgresql://ann:secret@host/db``). We never write one
(settings hold the URL without it; libpq reads passwords from ``~/.pgpass``, a service
file, or ``PGPASSWORD``; the OS keyring is asked when none of them has it), and
:func:`redact_url` is the one function that makes every URL we show safe: messages,
logs, ``nmid stats``, the window's title.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

PG_SCHEMES = ("postgresql", "postgres")
_URL_IN_TEXT = re.compile(r"postgres(?:ql)?://[^\s'\"]+")
_SECRET_PARAMS = {"password", "sslpassword"}


def is_pg_url(location: str | Path) -> bool:
    """True when ``location`` names a PostgreSQL library (``postgresql://`` or ``postgres://``)."""
    text = str(location)
    return any(text.lower().startswith(f"{scheme}://") for scheme in PG_SCHEMES)


def redact_url(url: str) -> str:
    """The URL with any password (in the user part or a ``password=`` parameter) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every PostgreSQL URL inside ``text`` (an error message) redacted, plus libpq's ``password=`` pairs."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)


def url_password(url: str) -> str | None:
    """The password written in a URL, if any (to warn that it should not be there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.password:
        return parts.password
    for key, value in parse_qsl(parts.query):
        if key.lower() == "password":
            return value
    return None


def library_key(url: str) -> str:
    """A stable folder name for one shared library on this PC (its cache: indexes).

    From the URL without password or options, so a password change keeps the cache.
    """
    parts = urlsplit(redact_url(url))
    host = parts.hostname or "local"
    user = parts.username or ""
    base = f"{parts.scheme}://{user}@{host}:{parts.port or 5432}{parts.path}"
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{host}_{parts.path.strip('/') or 'db'}")[:60]
    return f"{readable}-{hashlib.sha256(base.encode('utf-8')).hexdigest()[:12]}"
