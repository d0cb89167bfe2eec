"""The ``nmid`` command. Sub-commands live in ``nmid_desktop.commands``, one module per area.

Each command module has ``register(subparsers)``, which adds its parsers and sets
``func(args) -> int`` on each. Qt is imported only by ``nmid gui``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from nmid_desktop import __version__
from nmid_desktop.core.errors import Cancelled, NmidError
from nmid_desktop.core.text import printable

# Order is the order of `nmid --help`. A module missing here is a bug, not an option.
COMMAND_MODULES = (
    "nmid_desktop.commands.library",
    "nmid_desktop.commands.shared",
    "nmid_desktop.commands.train",
    "nmid_desktop.commands.retrieval",
    "nmid_desktop.commands.graph",
    "nmid_desktop.commands.embed",
    "nmid_desktop.commands.lmm",
    "nmid_desktop.commands.review",
    "nmid_desktop.commands.cache",
    "nmid_desktop.commands.gui",
)


class _PrintableFormatter(logging.Formatter):
    """Log lines with control characters escaped: a file name can hold terminal escape codes."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record), keep_newlines=True)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every sub-command."""
    from nmid_desktop.commands._common import EXIT_CODES

    parser = argparse.ArgumentParser(
        prog="nmid",
        description="Classify electron micrographs from retrieved, labelled demonstrations.",
        epilog=EXIT_CODES[0].upper() + EXIT_CODES[1:] + ".",
    )
    parser.add_argument("--version", action="version", version=f"nmid-desktop {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nmid``; returns the exit code (0 success, 1 error, 2 usage, 130 cancelled)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Cancelled:
        print("nmid: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("nmid: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `nmid ... | head` closed the pipe: not an error of ours. Point stdout at devnull so
        # the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except NmidError as exc:
        print(f"nmid: error: {printable(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
