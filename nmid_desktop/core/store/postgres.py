"""The PostgreSQL library backend: a lab's shared library, several microscopists at once.

Rows live in the database named by a ``postgresql://`` URL; image bytes live in the
lab's shared folder, content-addressed by sha256 (``images/<sha[:2]>/<sha><ext>``), and
the database stores paths relative to it. Each PC names where it mounts that folder
(setting ``shared_folder``; ``S:\\nmid`` on one PC, ``/mnt/lab/nmid`` on another). A
marker file ``nmid-library.json`` in the folder holds the library's id, so a PC that
mounts the wrong folder is told so instead of reading someone else's images.

Concurrency: every label write first moves the labels version on (one row, locked
until commit), so label writers are serialised and each reads the image's current
row; ``expected_version`` turns a stale read into a :class:`LabelConflict`. Other
clients follow with :meth:`changes_since`, one indexed query (a cheap version poll).

Faults: a dropped connection (server restarted, backend terminated, network gone)
is noticed by the next statement; reads reconnect and run again, and a label write
(set_label, set_review, undo, redo, merge) is retried for up to ``RECONNECT_S``
seconds. Each write carries a token recorded in the same transaction, so a write
whose COMMIT reply was lost is found on retry and not applied twice. Anything else
reports :class:`LibraryUnavailable` with the URL's password redacted.

Threads: one connection per thread, as in the SQLite backend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql as pgsql

from nmid_desktop.core.errors import LibraryError, LibraryUnavailable
from nmid_desktop.core.paths import cache_dir
from nmid_desktop.core.store.base import ImageRecord, PredictionRecord
from nmid_desktop.core.store.location import library_key, redact_text, redact_url, url_password
from nmid_desktop.core.store.pg_schema import MIGRATIONS, SCHEMA_VERSION
from nmid_desktop.core.store.sql import SqlStore, _now
from nmid_desktop.core.store.sql_base import _IMAGE_SELECT, _in_order

log = logging.getLogger(__name__)

T = TypeVar("T")
MARKER = "nmid-library.json"
CONNECT_TIMEOUT_S = 5
RECONNECT_S = 20.0
KEYRING_SERVICE = "nmid-desktop-postgresql"
_MIGRATION_LOCK = 0x6E6D6964  # pg_advisory_xact_lock key: one client migrates at a time
NOTIFY_CHANNEL = "nmid_labels"  # every label change notifies it with the new labels version
_KEPT_CURSORS = 64  # per thread: one per single-row statement run (PgStore._cursor)


class _Row(tuple):
    """A result row addressable by position and by column name, like ``sqlite3.Row``."""

    _names: dict[str, int] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


_ROW_CLASSES: dict[tuple[bytes | None, ...], type[_Row]] = {}


def _row_factory(cursor: Any) -> type[_Row]:
    # Keyed by the result's raw field names: ``cursor.description`` would build a Column
    # object per field on every statement, a third of a one-row read's time on 127.0.0.1.
    result = cursor.pgresult
    raw = () if result is None else tuple(result.fname(i) for i in range(result.nfields))
    cls = _ROW_CLASSES.get(raw)
    if cls is None:
        names = tuple(c.name for c in cursor.description or ())
        cls = _ROW_CLASSES[raw] = type("Row", (_Row,), {"_names": {n: i for i, n in enumerate(names)}})
    return cls


def _returned_id(row: Any) -> int:
    if row is None:  # pragma: no cover - an INSERT ... RETURNING always returns its row
        raise LibraryError("an insert returned no id")
    return int(row[0])


def _lost_or_stale(exc: BaseException) -> bool:
    """The connection is gone, or a prepared statement is stale ("cached plan must not change
    result type", raised before the statement runs): either way, a new connection helps."""
    return isinstance(exc, psycopg.OperationalError) or (
        isinstance(exc, psycopg.errors.FeatureNotSupported) and "cached plan" in str(exc)
    )


_SQL_CACHE: dict[str, str] = {}


def _pg_sql(text: str) -> str:
    """``?`` placeholders to psycopg's ``%s`` (a literal ``%`` doubled); our SQL has no ``?`` in strings."""
    out = _SQL_CACHE.get(text)
    if out is None:
        out = text.replace("%", "%%").replace("?", "%s")
        _SQL_CACHE[text] = out
    return out


def keyring_password(url: str) -> str | None:
    """A password stored in the OS keyring for this library URL (user@host:port/db), if any."""
    try:
        import keyring
    except ImportError:
        return None
    try:
        return keyring.get_password(KEYRING_SERVICE, library_key(url))
    except Exception:  # noqa: BLE001 - a broken keyring backend must not stop libpq's own lookup
        log.debug("keyring lookup failed", exc_info=True)
        return None


class PgStore(SqlStore):
    """A shared library: a PostgreSQL database plus this PC's mount of the shared image folder.

    Use :func:`nmid_desktop.core.store.open_library` with a ``postgresql://`` URL.
    """

    _NO_LIMIT = None
    _integrity_error = psycopg.IntegrityError

    def __init__(
        self,
        url: str,
        *,
        shared_folder: Path | None,
        create: bool = True,
        user: str = "",
        allow_incomplete: bool = False,
    ) -> None:
        self.url = url
        self.user = user
        if shared_folder is None or not str(shared_folder).strip():
            raise LibraryError(
                f"the shared library {redact_url(url)} needs this PC's mount of the lab's shared image folder: "
                "set shared_folder in settings (e.g. S:\\\\nmid or /mnt/lab/nmid)"
            )
        self.root = Path(shared_folder)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: dict[threading.Thread, psycopg.Connection[Any]] = {}
        self._closed = False
        self._made_dirs: set[Path] = set()
        self._password: str | None = None
        self._listener: psycopg.Connection[Any] | None = None  # LISTEN connection of wait_for_changes
        if url_password(url):
            log.warning("the URL of %s carries a password; put it in .pgpass or the OS keyring instead", self.location)
        try:
            try:
                self._migrate(create)
            except psycopg.OperationalError as exc:  # the server went away while we opened it
                raise self._lost(exc) from None
            self._check_folder(create)
            if not allow_incomplete and self.get_meta("copy_state") == "incomplete":
                raise LibraryError(
                    f"{self.location} holds an interrupted `nmid library copy`; it is not usable: "
                    "drop the database (or empty it) and copy again"
                )
        except BaseException:
            self.close()
            raise

    # -- naming -------------------------------------------------------------------------
    @property
    def location(self) -> str:
        return redact_url(self.url)

    @property
    def index_dir(self) -> Path:
        # Indexes are per PC (Annoy files are memory-mapped; a share would be slow and racy).
        return cache_dir() / "libraries" / library_key(self.url) / "index"

    # -- connections ----------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        kwargs: dict[str, Any] = {
            "autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S, "application_name": "nmid-desktop",
            "row_factory": _row_factory,
        }
        if self._password:
            kwargs["password"] = self._password
        try:
            conn = psycopg.connect(self.url, **kwargs)
            # Every statement here is a short indexed read or write, and psycopg prepares the ones
            # run often: plan each prepared statement once. Left to "auto", PostgreSQL keeps
            # replanning a join of a few ids, and planning (0.4 ms on a slow PC) then costs more
            # than running it.
            conn.execute("SET plan_cache_mode = force_generic_plan")
            return conn
        except psycopg.OperationalError as exc:
            text = str(exc)
            if "password" in text.lower() and self._password is None:
                # libpq found no password in .pgpass, the service file or PGPASSWORD: try the OS keyring.
                self._password = keyring_password(self.url)
                if self._password:
                    return self._connect()
            first = redact_text(text).strip().splitlines()
            hint = (
                "; put the password in the .pgpass file or run `nmid library password URL` (never in the URL)"
                if "password" in text.lower() else ""
            )
            raise LibraryUnavailable(
                f"cannot reach the shared library {self.location}" + (f": {first[0]}" if first else "") + hint
            ) from None
        except psycopg.ProgrammingError as exc:  # a malformed URL
            raise LibraryError(f"{self.location} is not a usable PostgreSQL URL: {redact_text(str(exc))}") from None

    def _conn(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise LibraryError(f"the library {self.location} is closed")
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed:
            return conn
        with self._lock:
            for thread in [t for t in self._conns if not t.is_alive()]:
                with contextlib.suppress(psycopg.Error):
                    self._conns.pop(thread).close()
        conn = self._connect()
        with self._lock:
            self._conns[threading.current_thread()] = conn
        self._local.conn = conn
        self._local.depth = 0
        return conn

    def _drop_conn(self) -> None:
        """Forget this thread's connection (it is broken); the next statement reconnects."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        self._local.cursors = None
        self._local.depth = 0
        if conn is not None:
            with self._lock:
                self._conns.pop(threading.current_thread(), None)
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _lost(self, exc: BaseException) -> LibraryUnavailable:
        self._drop_conn()
        first = redact_text(str(exc)).strip().splitlines()
        return LibraryUnavailable(
            f"lost the connection to the shared library {self.location}"
            + (f": {first[0]}" if first else "")
        )

    def _depth(self) -> int:
        return int(getattr(self._local, "depth", 0))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns.values()), {}
            if self._listener is not None:
                conns.append(self._listener)
                self._listener = None
        for conn in conns:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    # -- dialect hooks -----------------------------------------------------------------------
    def _q(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        text = _pg_sql(sql)
        return self._retried(lambda: self._conn().execute(text, params, binary=True))

    def _q_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        text = _pg_sql(sql)
        return self._retried(lambda: self._cursor(text).execute(text, params, binary=True).fetchone())

    def _retried(self, run: Callable[[], T]) -> T:
        """Run one statement; outside a transaction, once more on a new connection if it was lost.

        A prepared statement whose tables another PC changed (an upgrade of the library adds
        a column) fails before it runs; a new connection prepares it again, so it counts as lost.
        """
        try:
            return run()
        except (psycopg.OperationalError, psycopg.errors.FeatureNotSupported) as exc:
            if not _lost_or_stale(exc):
                raise
            if self._depth() > 0:  # the caller's transaction is lost: _write runs it again
                raise self._lost(exc) from None
            # Outside a transaction nothing was half done: reconnect and run the statement again.
            self._drop_conn()
            try:
                return run()
            except (psycopg.OperationalError, psycopg.errors.FeatureNotSupported) as again:
                if not _lost_or_stale(again):
                    raise
                raise self._lost(again) from None

    def _cursor(self, text: str) -> psycopg.Cursor[Any]:
        """This thread's cursor for one statement (psycopg SQL), kept for its next run.

        Only for statements whose rows are fetched before the caller returns. The hot
        statements of a query do not pay for a new cursor and its adapters map (what
        ``Connection.execute`` builds every time). Rows are found by their field names
        (``_row_factory``), so a column another PC's migration adds or drops is read right.
        """
        conn = self._conn()
        kept: tuple[psycopg.Connection[Any], dict[str, psycopg.Cursor[Any]]] | None = getattr(
            self._local, "cursors", None
        )
        if kept is None or kept[0] is not conn:
            kept = (conn, {})
            self._local.cursors = kept
        cursor = kept[1].get(text)
        if cursor is None:
            if len(kept[1]) >= _KEPT_CURSORS:  # statements built from filters vary: keep a bounded few
                kept[1].clear()
            cursor = kept[1][text] = conn.cursor()
        return cursor

    def _record(self, row: Any) -> ImageRecord:
        # By name through a dict (C lookups): _Row's Python __getitem__ per field cost more.
        return super()._record(dict(zip(row._names, row, strict=True)))

    def _insert(self, sql: str, params: Sequence[Any]) -> int:
        return _returned_id(self._q(sql + " RETURNING id", params).fetchone())

    def _insert_one(self, sql: str, params: Sequence[Any]) -> int:
        if self._depth() > 0:  # inside the caller's transaction: a savepoint keeps it usable on an error
            return super()._insert_one(sql, params)
        # One statement in autocommit is all or nothing on its own: no BEGIN and COMMIT round
        # trips. Not retried: a lost reply may hide a committed row, and a retry would add it twice.
        text = _pg_sql(sql + " RETURNING id")
        return _returned_id(self._once(lambda: self._cursor(text).execute(text, params).fetchone()))

    def _once(self, run: Callable[[], T]) -> T:
        """Run a statement that must not run twice (a lost reply may hide its commit).

        A lost connection or a stale prepared statement is reported as LibraryUnavailable,
        and the connection is dropped, so the next statement starts on a fresh one.
        """
        try:
            return run()
        except (psycopg.OperationalError, psycopg.errors.FeatureNotSupported) as exc:
            if not _lost_or_stale(exc):
                raise
            raise self._lost(exc) from None

    # Parameters: the prediction's row (``_prediction_row``), then the array of image ids.
    _QUERY_FINISH = (
        f"WITH stored AS ({SqlStore._PREDICTION_INSERT} RETURNING id) {_IMAGE_SELECT} WHERE i.id = ANY(?::bigint[])"
    )

    def query_finish(self, demo_ids: Sequence[int], prediction: PredictionRecord | None) -> list[ImageRecord]:
        if self._depth() > 0 or prediction is None or not demo_ids:
            return super().query_finish(demo_ids, prediction)
        ids = [int(i) for i in demo_ids]
        values = self._prediction_row(prediction)
        # The insert and the read as one statement: one round trip. It runs in autocommit (all
        # or nothing) and is not retried, as in _insert_one.
        # ``= ANY``: an index scan of a few ids, no sort (the caller's order is restored below).
        text = _pg_sql(self._QUERY_FINISH)
        try:
            rows = self._once(lambda: self._cursor(text).execute(text, [*values, ids], binary=True).fetchall())
        except psycopg.IntegrityError as exc:
            raise LibraryError(f"cannot store a prediction for image {prediction.image_id}: {exc}") from exc
        return _in_order({record.id: record for record in map(self._record, rows)}, ids)

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            with self._conn().cursor() as cur:
                cur.executemany(_pg_sql(sql), list(rows))
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from None

    def _id_table(self, ids: Sequence[int]) -> tuple[str, Any]:
        return "unnest(?::bigint[]) WITH ORDINALITY AS j(value, key)", [int(i) for i in ids]

    def _bump(self) -> int:
        # One round trip: move the version on and queue a notification, which PostgreSQL
        # delivers to listeners only when (and if) the transaction commits.
        row = self._q(
            "WITH v AS (UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) "
            "WHERE key = 'labels_version' RETURNING value) SELECT value, pg_notify(?, value) FROM v",
            (NOTIFY_CHANNEL,),
        ).fetchone()
        if row is None:  # pragma: no cover - the row is created by the first migration
            raise LibraryError(f"{self.location} has no labels version; is it a library?")
        return int(row[0])

    def wait_for_changes(self, since: int, timeout_s: float = 30.0) -> int:
        """Block until a label change after version ``since`` commits (LISTEN/NOTIFY), or the timeout."""
        with self._lock:
            if self._closed:
                raise LibraryError(f"the library {self.location} is closed")
            listener = self._listener
            if listener is None or listener.closed:
                listener = self._connect()
                listener.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(NOTIFY_CHANNEL)))
                self._listener = listener
        version = self.labels_version()  # after LISTEN: a change from now on cannot be missed
        if version > since:
            return version
        try:
            for _ in listener.notifies(timeout=max(0.0, timeout_s), stop_after=1):
                break
        except psycopg.OperationalError as exc:
            with contextlib.suppress(psycopg.Error):
                listener.close()
            raise self._lost(exc) from None
        return self.labels_version()

    def _write(self, operation: Callable[[], T]) -> T:
        if self._depth() > 0:  # inside the caller's transaction: it decides
            return operation()
        deadline = time.monotonic() + RECONNECT_S
        delay = 0.0  # a terminated backend: reconnect at once; a restarting server: back off
        retrying = False
        while True:
            self._local.retrying = retrying  # a retry looks for its token (_op_done)
            try:
                return operation()
            except LibraryUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("shared library %s: connection lost, retrying", self.location)
                time.sleep(delay)
                delay = min(max(delay * 2, 0.1), 2.0)
                retrying = True
            finally:
                self._local.retrying = False

    def _retrying(self) -> bool:
        return bool(getattr(self._local, "retrying", False))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: ``BEGIN`` outermost, a ``SAVEPOINT`` when nested (same thread)."""
        conn = self._conn()
        depth = self._depth()
        try:
            conn.execute("BEGIN" if depth == 0 else f"SAVEPOINT sp{depth}")
        except psycopg.OperationalError as exc:
            if depth > 0:
                raise self._lost(exc) from None
            # Cut while idle (server restarted, backend terminated): nothing is half done yet.
            self._drop_conn()
            conn = self._conn()
            try:
                conn.execute("BEGIN")
            except psycopg.OperationalError as again:
                raise self._lost(again) from None
        self._local.depth = depth + 1
        try:
            yield
        except BaseException:
            self._local.depth = depth
            if conn.closed or conn.broken:
                self._drop_conn()
                raise
            try:
                if depth == 0:
                    conn.execute("ROLLBACK")
                else:
                    conn.execute(f"ROLLBACK TO sp{depth}")
                    conn.execute(f"RELEASE sp{depth}")
            except psycopg.OperationalError:
                self._drop_conn()
            raise
        self._local.depth = depth
        try:
            conn.execute("COMMIT" if depth == 0 else f"RELEASE sp{depth}")
        except psycopg.OperationalError as exc:
            # The reply is lost, not necessarily the commit: retried writes find their token.
            raise self._lost(exc) from None

    # -- schema and shared folder ------------------------------------------------------------
    def _migrate(self, create: bool) -> None:
        conn = self._conn()
        have = conn.execute("SELECT to_regclass('nmid_schema') IS NOT NULL").fetchone()
        if not (have and have[0]):
            if not create:
                raise LibraryError(f"no library in {self.location}; create it with `nmid library copy` or an import")
        with self.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS nmid_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM nmid_schema").fetchone()
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise LibraryError(
                    f"the library {self.location} has schema version {version}, newer than this nmid-desktop "
                    f"understands ({SCHEMA_VERSION}); update nmid-desktop to open it"
                )
            try:
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[target - 1]:
                        conn.execute(statement)
            except psycopg.Error as exc:
                raise LibraryError(
                    f"cannot upgrade the library {self.location} from schema version {version} to "
                    f"{SCHEMA_VERSION} (nothing was changed): {redact_text(str(exc))}"
                ) from None
            if version == 0:
                conn.execute("INSERT INTO nmid_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
                for key, value in (("created_at", _now()), ("library_id", uuid.uuid4().hex)):
                    conn.execute("INSERT INTO meta (key, value) VALUES (%s, %s)", (key, json.dumps(value)))
            elif version < SCHEMA_VERSION:
                conn.execute("UPDATE nmid_schema SET version = %s", (SCHEMA_VERSION,))

    def _check_folder(self, create: bool) -> None:
        """The shared folder must be this library's (its marker names the library's id)."""
        library_id = self.get_meta("library_id")
        marker = self.root / MARKER
        try:
            if marker.is_file():
                found = json.loads(marker.read_text(encoding="utf-8")).get("library_id")
                if found != library_id:
                    raise LibraryError(
                        f"{self.root} is the shared folder of another library ({found}), not of {self.location}; "
                        "check the shared_folder setting of this PC"
                    )
                return
            if not create:
                raise LibraryError(f"{self.root} is not the shared folder of {self.location} (no {MARKER}); is it mounted?")
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".{MARKER}.{uuid.uuid4().hex[:8]}.tmp"
            tmp.write_text(json.dumps({"library_id": library_id}), encoding="utf-8")
            tmp.replace(marker)
        except OSError as exc:
            raise LibraryError(f"cannot use the shared folder {self.root}: {exc.strerror or exc}") from None

    def database_bytes(self) -> int:
        """The database's size on the server (for ``nmid stats``)."""
        row = self._q("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0

    def after_bulk_load(self) -> None:
        """After rows were copied in with their ids: move every id sequence past the largest id,
        and gather the planner's statistics (a fresh table has none until autovacuum comes by,
        and until then a join of a few rows can be planned as a scan).

        Only tables that hold rows are analyzed. An empty table analyzed says "no rows" for
        certain, and a prepared statement planned on that (``force_generic_plan``) scans the
        table for good while it grows: ``query_start``'s newest-answer lookup over ``predictions``
        (one more row per query) got slower with every query. A table never analyzed is
        planned as a small table of unknown size, whose point lookups use the index.
        """
        self.reset_identities()
        conn = self._conn()
        tables = [str(r[0]) for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = current_schema() ORDER BY c.relname"
        ).fetchall()]
        for table in tables:
            name = pgsql.Identifier(table)
            found = conn.execute(pgsql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(name)).fetchone()
            if found is not None and found[0]:
                conn.execute(pgsql.SQL("ANALYZE {}").format(name))

    def reset_identities(self) -> None:
        """Move every id sequence past the largest id (after rows were copied in with their ids)."""
        from nmid_desktop.core.store.pg_schema import IDENTITY_TABLES

        for table in IDENTITY_TABLES:
            self._conn().execute(
                pgsql.SQL("SELECT setval(pg_get_serial_sequence({t}, 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {i}")
                .format(t=pgsql.Literal(table), i=pgsql.Identifier(table))
            )
