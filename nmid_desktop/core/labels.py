"""Class names: what a label may be, and how it becomes a folder name on export.

A label is chosen by a person, a CSV file, a folder name or a multimodal model's
answer, so it is untrusted text. :func:`validate_label` keeps names that are safe
to store and show; :func:`safe_dirname` and :func:`assign_dirnames` turn names into
folder names that are valid on both Windows and Linux and never collide, so an
export cannot write outside its target folder or merge two classes into one folder.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from nmid_desktop.core.errors import LabelError

MAX_LABEL_LENGTH = 100

# Unicode categories refused in names: control characters (Cc), invisible format
# characters such as right-to-left overrides that make two names look alike (Cf),
# line and paragraph separators (Zl, Zp), and unassigned/surrogate code points.
_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}

# Characters Windows refuses in file names (Linux only refuses "/" and NUL).
_WINDOWS_BAD_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')

# Device names Windows reserves in every folder, with or without an extension
# ("CON.txt" is CON too). The superscript digits are reserved as well.
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
_WINDOWS_RESERVED |= {f"{dev}{n}" for dev in ("COM", "LPT") for n in list("0123456789") + ["¹", "²", "³"]}

# Keep folder names well below Windows' 255-character component limit, leaving room
# for a collision suffix.
_MAX_DIRNAME = 80


def validate_label(name: str) -> str:
    """Check a class name and return it normalised (stripped, Unicode NFC).

    Args:
        name: The proposed class name.

    Returns:
        The name as it will be stored.

    Raises:
        LabelError: If the name is empty, longer than 100 characters, contains a
            control or invisible character, a slash or backslash, or ``..``.
    """
    if not isinstance(name, str):
        raise LabelError(f"a class name must be text, not {type(name).__name__}")
    # NFC so that "é" typed two different ways is one class, not two.
    text = unicodedata.normalize("NFC", name).strip()
    if not text:
        raise LabelError("a class name must not be empty")
    if len(text) > MAX_LABEL_LENGTH:
        raise LabelError(f"class name {text[:30]!r}... is {len(text)} characters long; the limit is {MAX_LABEL_LENGTH}")
    for char in text:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise LabelError(f"class name {text!r} contains a control or invisible character (U+{ord(char):04X})")
    if "/" in text or "\\" in text:
        raise LabelError(f"class name {text!r} must not contain '/' or '\\'")
    if ".." in text:
        raise LabelError(f"class name {text!r} must not contain '..'")
    return text


def safe_dirname(name: str) -> str:
    """A folder name for a class that is valid on Windows and Linux.

    Characters Windows forbids become ``_``, trailing dots and spaces are dropped,
    reserved device names (``CON``, ``NUL``, ``COM1``...) get a leading ``_``, and
    the result is never empty, ``.`` or ``..``. Different names can map to the same
    folder (``a:b`` and ``a?b``; ``Pores`` and ``pores`` on Windows): use
    :func:`assign_dirnames` to resolve that for a whole set of classes.

    Args:
        name: A class name (validated or not).

    Returns:
        A single path component without separators.
    """
    text = unicodedata.normalize("NFC", str(name))
    text = "".join("_" if unicodedata.category(c) in _FORBIDDEN_CATEGORIES else c for c in text)
    text = _WINDOWS_BAD_CHARS.sub("_", text).strip()
    text = text[:_MAX_DIRNAME]
    # Windows silently drops trailing dots and spaces, which would make "a." and "a" one folder.
    text = text.rstrip(". ")
    if not text or set(text) <= {"."}:
        return "_"
    stem = text.split(".", 1)[0].rstrip(" ").upper()
    if stem in _WINDOWS_RESERVED:
        text = "_" + text
    return text


def assign_dirnames(names: Iterable[str]) -> dict[str, str]:
    """Map distinct class names to distinct, safe folder names.

    Folder names are compared case-insensitively, as Windows and macOS do; a
    collision gets a numeric suffix (``pores``, ``Pores-2``). The first name in
    sorted order keeps the plain folder name, so the mapping is deterministic.

    Args:
        names: Class names.

    Returns:
        ``{class name: folder name}``.
    """
    result: dict[str, str] = {}
    taken: set[str] = set()
    for name in sorted(set(names)):
        base = safe_dirname(name)
        candidate = base
        n = 2
        while candidate.casefold() in taken:
            candidate = f"{base}-{n}"
            n += 1
        taken.add(candidate.casefold())
        result[name] = candidate
    return result


def safe_filename(name: str, *, max_length: int = 80) -> str:
    """A file-name stem that is valid on Windows and Linux (same rules as :func:`safe_dirname`)."""
    text = safe_dirname(name)
    return text[:max_length].rstrip(". ") or "_"
