"""Atomic file writes: a crash or a full disk never leaves half a file under the final name."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str, *, private: bool = False) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Args:
        path: The destination; its folder is created if missing.
        text: UTF-8 content.
        private: Make the file readable by the user only (0600 on POSIX), e.g. for a secret.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        if private and os.name == "posix":
            # mkstemp already creates 0600 files; chmod again in case of an odd umask.
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
