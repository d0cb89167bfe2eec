"""The library store: ``open_library(folder)`` and the records it returns.

Everything outside this package talks to :class:`Store`; the SQL lives in
``sqlite.py`` only, so another backend (PostgreSQL for a whole lab) is a new class.
"""

from __future__ import annotations

from pathlib import Path

from nmid_desktop.core.errors import LibraryError
from nmid_desktop.core.store.base import (
    CLASS_KEYS,
    LABEL_SOURCES,
    REVIEW_STATES,
    SPLITS,
    ClassRecord,
    DescriptionRecord,
    DescriptionRow,
    ImageFilter,
    ImageRecord,
    LabelChanges,
    LabelEvent,
    PredictionRecord,
    QueryStart,
    Store,
)
from nmid_desktop.core.store.sqlite import DB_NAME, SCHEMA_VERSION, SqliteStore

__all__ = [
    "CLASS_KEYS",
    "DB_NAME",
    "LABEL_SOURCES",
    "REVIEW_STATES",
    "SCHEMA_VERSION",
    "SPLITS",
    "ClassRecord",
    "DescriptionRecord",
    "DescriptionRow",
    "ImageFilter",
    "ImageRecord",
    "LabelChanges",
    "LabelEvent",
    "PredictionRecord",
    "QueryStart",
    "SqliteStore",
    "Store",
    "open_library",
]


def open_library(
    folder: Path | str,
    *,
    create: bool = True,
    shared_folder: Path | None = None,
    user: str | None = None,
    allow_incomplete: bool = False,
) -> Store:
    """Open the library at ``folder`` (a folder, or a ``postgresql://`` URL), creating it when ``create``.

    Args:
        folder: The library folder (holds ``library.sqlite`` and ``images/``), or the URL of a
            shared PostgreSQL library (its password, if any, comes from libpq's ``.pgpass``,
            service file or ``PGPASSWORD``, or the OS keyring; never write it into settings).
        create: When False, a folder without a library raises instead of being initialised.
        shared_folder: For a PostgreSQL library: this PC's mount of the lab's shared image
            folder (default: the ``shared_folder`` setting).
        user: Who works with the library (default: the ``user`` setting, else the OS login).
        allow_incomplete: Open a library marked as an interrupted copy (``nmid library copy``).

    Returns:
        The open store; call ``close()`` when done (it is also a context manager).

    Raises:
        LibraryError: If there is no library and ``create`` is False, the database is
            not a library, or it was made by a newer nmid-desktop.
    """
    from nmid_desktop.core.config import current_user, load_settings
    from nmid_desktop.core.store.location import is_pg_url

    if is_pg_url(folder):
        try:
            from nmid_desktop.core.store.postgres import PgStore
        except ImportError as exc:
            raise LibraryError(
                "a PostgreSQL library needs psycopg: pip install 'nmid-desktop[shared]'"
            ) from exc
        if shared_folder is None:
            configured = load_settings().shared_folder
            shared_folder = Path(configured) if configured else None
        return PgStore(
            str(folder), shared_folder=shared_folder, create=create,
            user=user if user is not None else current_user(), allow_incomplete=allow_incomplete,
        )
    return SqliteStore(Path(folder), create=create, user=user, allow_incomplete=allow_incomplete)
