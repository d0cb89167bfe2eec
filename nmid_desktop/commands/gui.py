"""``nmid gui``: open the desktop window. Qt is imported only when this command runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from nmid_desktop.commands._common import add_library_arg


def _cmd_gui(args: argparse.Namespace) -> int:
    # Imported here so that every other `nmid` command works without a display or Qt.
    from nmid_desktop.qt.app import run_app

    # exit_when_stuck: a worker still stuck in a request after the window closed ends the process
    # there, since Python's exit would destroy its running QThread, which aborts the process.
    return run_app(args.library, demo=args.demo, paths=args.paths, exit_when_stuck=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``nmid gui`` to the ``nmid`` command."""
    p = subparsers.add_parser(
        "gui",
        help="open the desktop window",
        description="Open the window: drop micrographs to see their most similar labelled images, a "
        "prediction, and accept or correct the label. With --demo, an empty library is first filled "
        "with the built-in demo images.",
    )
    add_library_arg(p)
    p.add_argument("paths", nargs="*", type=Path, metavar="FILE",
                   help="images or folders to open, as a drop onto the window would")
    p.add_argument(
        "--demo",
        action="store_true",
        help="open the demo library (built on first use; default folder: 'demo' in the user data folder)",
    )
    p.set_defaults(func=_cmd_gui)
