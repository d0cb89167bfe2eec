"""``nmid library``: a library's backend: copy between SQLite and PostgreSQL, store a password.

``nmid library copy SRC DST`` moves a whole library (images, labels, history, splits,
embeddings); each of SRC and DST is a folder or a ``postgresql://`` URL.
``nmid library password URL`` puts a database password into the OS keyring, for PCs
without a ``.pgpass`` file: never into settings.
"""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path

from nmid_desktop.commands._common import drive
from nmid_desktop.core.config import load_settings
from nmid_desktop.core.errors import ConfigError, LibraryError
from nmid_desktop.core.store.location import is_pg_url, library_key, redact_url


def _shared_folder(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    configured = load_settings().shared_folder
    return Path(configured) if configured else None


def _cmd_copy(args: argparse.Namespace) -> int:
    from nmid_desktop.core.store import open_library
    from nmid_desktop.core.store.copy import copy_library

    if str(args.src) == str(args.dst):
        raise LibraryError("source and destination are the same library")
    with open_library(args.src, create=False, shared_folder=_shared_folder(args.src_folder)) as src, open_library(
        args.dst, create=True, shared_folder=_shared_folder(args.dst_folder), allow_incomplete=True
    ) as dst:
        report = drive(copy_library(src, dst))
        print(f"{src.location} -> {dst.location}: {report.summary()}")
    return 0


def _cmd_password(args: argparse.Namespace) -> int:
    from nmid_desktop.core.store.postgres import KEYRING_SERVICE

    if not is_pg_url(args.url):
        raise ConfigError(f"{args.url} is not a postgresql:// URL")
    try:
        import keyring
    except ImportError as exc:  # pragma: no cover - keyring is a dependency
        raise ConfigError("the keyring package is missing") from exc
    password = getpass.getpass(f"password for {redact_url(args.url)}: ")
    if not password:
        raise ConfigError("no password given; nothing stored")
    try:
        keyring.set_password(KEYRING_SERVICE, library_key(args.url), password)
    except Exception as exc:  # noqa: BLE001 - any backend failure is one message
        raise ConfigError(
            f"cannot store the password in the OS keyring ({type(exc).__name__}); use a ~/.pgpass file instead"
        ) from None
    print(f"stored the password for {redact_url(args.url)} in the OS keyring")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``nmid library copy`` and ``nmid library password``."""
    p = subparsers.add_parser(
        "library",
        help="copy a library between SQLite and PostgreSQL; store a database password",
        description="A library's backend. A library is a folder (SQLite) or a postgresql://user@host:port/db URL "
        "(a lab's shared library; its images live in the shared folder named by --*-folder or the "
        "shared_folder setting).",
    )
    sub = p.add_subparsers(dest="library_command", metavar="ACTION")
    q = sub.add_parser(
        "copy", help="copy a whole library to a new one (SQLite <-> PostgreSQL)",
        description="Copy images, labels, history, splits, embeddings, predictions and descriptions into an "
        "empty library. Interrupted, the destination stays empty and marked unusable.",
    )
    q.add_argument("src", help="source library: folder or postgresql:// URL")
    q.add_argument("dst", help="destination library (new or empty): folder or postgresql:// URL")
    q.add_argument("--src-folder", default=None, metavar="PATH", help="shared image folder of a PostgreSQL source")
    q.add_argument("--dst-folder", default=None, metavar="PATH", help="shared image folder of a PostgreSQL destination")
    q.set_defaults(func=_cmd_copy)
    q = sub.add_parser(
        "password", help="store a PostgreSQL password in the OS keyring",
        description="Ask for the password of a shared library and store it in the OS keyring (used when "
        "libpq finds none in ~/.pgpass, a service file or PGPASSWORD). Never put it in the URL.",
    )
    q.add_argument("url", help="postgresql://user@host:port/db")
    q.set_defaults(func=_cmd_password)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
