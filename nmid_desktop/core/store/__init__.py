"""The library store: ``open_library(folder)`` and the records it returns.

Everything outside this package talks to :class:`Store`; the SQL lives in
``sqlite.py`` only, so another backend (PostgreSQL for a whole lab) is a new class.
"""

from __future__ import annotations

from pathlib import Path

from nmid_desktop.core.store.base import (
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
    Store,
)
from nmid_desktop.core.store.sqlite import DB_NAME, SCHEMA_VERSION, SqliteStore

__all__ = [
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
    "SqliteStore",
    "Store",
    "open_library",
]


def open_library(folder: Path, *, create: bool = True) -> Store:
    """Open the library in ``folder``, creating it (and the folder) when ``create`` is True.

    Args:
        folder: The library folder (holds ``library.sqlite`` and ``images/``).
        create: When False, a folder without a library raises instead of being initialised.

    Returns:
        The open store; call ``close()`` when done (it is also a context manager).

    Raises:
        LibraryError: If there is no library and ``create`` is False, the database is
            not a library, or it was made by a newer nmid-desktop.
    """
    return SqliteStore(Path(folder), create=create)
