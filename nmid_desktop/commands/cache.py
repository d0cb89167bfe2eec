"""``nmid cache``: see and clear the disk cache of model answers.

Only usable answers are cached, but an answer can still be one the user wants asked
again (a new model version behind the same name): ``nmid cache clear`` removes every
entry; the paid commands' ``refresh`` flag re-asks one batch and replaces its entries.
"""

from __future__ import annotations

import argparse

from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.text import printable


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nmid cache info`` and ``nmid cache clear``."""
    p = sub.add_parser("cache", help="show or clear the cache of model answers")
    actions = p.add_subparsers(dest="cache_action", metavar="ACTION")
    info = actions.add_parser("info", help="where the cache is and how many answers it holds")
    info.set_defaults(func=cmd_cache_info)
    clear = actions.add_parser("clear", help="delete every cached model answer (the next call asks, and pays, again)")
    clear.set_defaults(func=cmd_cache_clear)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def cmd_cache_info(args: argparse.Namespace) -> int:
    """``nmid cache info``."""
    from nmid_desktop.lmm.cache import ResponseCache

    cache = ResponseCache()
    print(f"{printable(str(cache.folder))}: {len(cache)} cached answers")
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    """``nmid cache clear``."""
    from nmid_desktop.lmm.cache import ResponseCache

    cache = ResponseCache()
    try:
        removed = cache.clear()
    except OSError as exc:
        raise NmidError(f"cannot clear the cache in {printable(str(cache.folder))}: {exc}") from None
    print(f"removed {removed} cached answers from {printable(str(cache.folder))}")
    return 0
