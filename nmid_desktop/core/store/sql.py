"""Store logic shared by the SQL backends (SQLite and PostgreSQL).

Every method speaks one SQL dialect, the common subset of SQLite and PostgreSQL:
``?`` placeholders (the PostgreSQL backend rewrites them), integer flags, ``ON
CONFLICT`` upserts and ``RETURNING``. What differs between the two (connections,
transactions, migrations, lists of ids as one parameter, error classes) is a small
set of hooks in :class:`~nmid_desktop.core.store.sql_base.SqlBase` each backend
implements. The logic is split by concern: ``sql_base`` (hooks, images, taxonomy
lookups), ``sql_labels`` (labels, history, undo, many users), ``sql_records``
(embeddings, predictions, descriptions, usage, splits, meta), ``sql_browse``
(the library browser's keyset pages, counts and review-queue keys).
"""

from __future__ import annotations

from nmid_desktop.core.store.sql_base import IMAGES_DIR, SqlBase, _now
from nmid_desktop.core.store.sql_browse import BrowseMixin
from nmid_desktop.core.store.sql_labels import LabelsMixin
from nmid_desktop.core.store.sql_records import RecordsMixin

__all__ = ["IMAGES_DIR", "SqlBase", "SqlStore", "_now"]


class SqlStore(LabelsMixin, RecordsMixin, BrowseMixin):
    """A complete dialect-neutral SQL library; a backend adds connections, transactions, migrations."""
