"""A disk cache of API responses, so that the same request is never paid for twice.

The key is the SHA-256 of (endpoint URL, kind of call, the full request as
canonical JSON). The request holds the model name, every message and every image
(as its data URL), so any change in prompt, image, model or option is a new key.
The API key is not part of the request and never reaches the cache.

Entries are JSON files written atomically (temporary file, then ``os.replace``),
so a crash or two threads answering the same request never leave half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from nmid_desktop.core.fileio import atomic_write_text
from nmid_desktop.core.paths import cache_dir

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``<user cache folder>/lmm`` (not created here)."""
    return cache_dir() / "lmm"


def request_key(endpoint: str, kind: str, request: dict[str, Any]) -> str:
    """The cache key of one request.

    Args:
        endpoint: The base URL (trailing slashes ignored).
        kind: The API call, e.g. ``"chat"`` or ``"images"``.
        request: The full JSON request body.

    Returns:
        64 hex digits.
    """
    canonical = json.dumps(
        {"format": CACHE_FORMAT, "endpoint": endpoint.rstrip("/"), "kind": kind, "request": request},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """Responses on disk under ``folder/<2 hex>/<64 hex>.json``. Safe to share between threads."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached response for ``key``, or None (a damaged entry counts as missing)."""
        path = self._path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read cache entry %s: %s", path.name, exc)
            return None
        try:
            entry = json.loads(text)
        except json.JSONDecodeError:
            log.warning("ignoring a damaged cache entry %s", path.name)
            return None
        if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
            return None
        response = entry.get("response")
        return response if isinstance(response, dict) else None

    def put(self, key: str, response: dict[str, Any]) -> None:
        """Store a response atomically."""
        text = json.dumps({"format": CACHE_FORMAT, "response": response}, ensure_ascii=False)
        atomic_write_text(self._path(key), text)

    def discard(self, key: str) -> bool:
        """Remove one entry (an answer found unusable); True when there was one."""
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_file()

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("??/*.json")) if self.folder.is_dir() else 0

    def clear(self) -> int:
        """Delete every entry, and temporary files a killed write left; returns how many entries went.

        Only the cache's own files (``<2 hex>/<64 hex>.json`` and their temporary siblings)
        are touched, so a mistyped cache folder cannot lose anything else.
        """
        removed = 0
        if not self.folder.is_dir():
            return 0
        for sub in self.folder.iterdir():
            if len(sub.name) != 2 or not sub.is_dir() or sub.is_symlink():
                continue
            for path in sub.iterdir():
                is_entry = path.suffix == ".json" and len(path.stem) == 64
                is_temporary = path.name.startswith(".") and path.name.endswith(".tmp")  # see atomic_write_text
                if is_entry or is_temporary:
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        raise OSError(f"cannot remove cache entry {path}: {exc.strerror}") from None
                    removed += is_entry
            try:
                sub.rmdir()
            except OSError:
                pass  # something else lives there: leave it
        return removed
