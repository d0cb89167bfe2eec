"""Text safe to print: file names and server answers cannot drive the user's terminal.

A file named ``\\x1b]0;pwned\\x07.png`` (legal on Linux) or a model name sent by a
hostile server would otherwise set the window title, hide text or move the cursor
when printed. :func:`printable` is the one function the CLI passes such text through.
"""

from __future__ import annotations

import unicodedata

# Unicode categories that draw nothing or reorder text: controls (Cc: ESC, BEL, CR),
# format characters (Cf: bidi overrides such as U+202E), line/paragraph separators.
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control or invisible formatting character shown as an escape.

    ``\\x1b[31m`` becomes the literal ``\\x1b[31m``; a tab becomes ``\\t``; U+202E
    becomes ``\\u202e``. Ordinary letters of any script are kept as they are.

    Args:
        text: A path, a class name, a message.
        keep_newlines: Keep ``\\n`` (for multi-line messages); anything else is escaped.

    Returns:
        Text that prints as what it is, on one line unless ``keep_newlines``.
    """
    out: list[str] = []
    for ch in str(text):
        if keep_newlines and ch == "\n":
            out.append(ch)
        elif unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            code = ord(ch)
            if ch == "\t":
                out.append("\\t")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\r":
                out.append("\\r")
            elif code <= 0xFF:
                out.append(f"\\x{code:02x}")
            elif code <= 0xFFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)
