"""Atomic file writes, and reads that only ever touch regular files.

A crash or a full disk never leaves half a file under the final name; a FIFO or a
link to ``/dev/zero`` among the images is reported, never read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from nmid_desktop.core.errors import ImageError


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


# ----------------------------------------------------------------------------- regular files only

def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device (like /dev/zero)"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file_problem(path: Path | str) -> str | None:
    """Why ``path`` is not a readable regular file (after following links), or None.

    Reading a FIFO blocks until a writer comes; ``/dev/zero`` never ends: every path
    that is read as an image or hashed is checked here first, so such a file is
    reported and skipped instead of hanging the job.
    """
    path = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "is a broken symbolic link" if os.path.islink(path) else "file not found"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "permission denied"
        return f"cannot read file ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        kind = _kind(st.st_mode)
        return f"is {kind}, not a regular file" if kind.startswith("a ") else kind
    return None


def check_regular_file(path: Path | str) -> None:
    """Raise :class:`ImageError` unless ``path`` is a regular file (links followed).

    Call this before opening any path a user gave (``classify``, ``similar``, imports).
    """
    problem = regular_file_problem(path)
    if problem is not None:
        raise ImageError(path, problem)


def open_regular(path: Path | str) -> BinaryIO:
    """Open a regular file for reading without ever blocking on a FIFO or device.

    The check is made on the opened descriptor (``fstat``), so a file swapped for a
    FIFO between a check and the open cannot hang the reader either.

    Raises:
        ImageError: If it is not a regular file or cannot be opened.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(str(path), flags)
    except OSError:
        check_regular_file(path)  # the clearest reason (loop, broken link, permission)
        raise ImageError(path, "cannot open file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _kind(st.st_mode)
            raise ImageError(path, f"is {kind}, not a regular file" if kind.startswith("a ") else kind)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a regular file's bytes, streamed (a FIFO or device is refused, not read).

    Raises:
        ImageError: If the path is not a regular file.
        OSError: If reading fails half-way.
    """
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
