"""Store test helpers: the session's PostgreSQL server and the ``Library`` handle stores are opened through.

One PostgreSQL cluster per test process (tests/pg_server.py: initdb in a temp folder,
127.0.0.1 on a free port, run as the ``postgres`` user under root); each test gets a
fresh database. Without a server outside CI the PostgreSQL cases skip with the
reason; with ``CI=true`` they fail, so CI can never pass by skipping them.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nmid_desktop.core.store import Store, open_library


@dataclass
class Library:
    """Where one test's library lives, and how to open it (again, or as another user)."""

    backend: str
    location: str
    shared: Path
    stores: list[Store] = field(default_factory=list)

    def open(self, *, create: bool = True, user: str | None = None, allow_incomplete: bool = False) -> Store:
        store = open_library(
            self.location, create=create, shared_folder=self.shared, user=user, allow_incomplete=allow_incomplete
        )
        self.stores.append(store)
        return store


def make_library(backend: str, tmp_path: Path, request: pytest.FixtureRequest, name: str = "lib") -> Library:
    if backend == "sqlite":
        return Library("sqlite", str(tmp_path / name), tmp_path / name)
    server = request.getfixturevalue("pg_server")
    return Library("postgresql", server.create_database(), tmp_path / f"{name}-shared")


_SERVER: Any = None
_FAILED = ""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}")
    pytest.skip(f"no PostgreSQL server for the shared-library tests: {reason}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """The session's PostgreSQL server (skips, or fails under CI, when it cannot start)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[shared]')")
    from pg_server import PgServer, find_bin_dir

    if find_bin_dir() is None:
        _unavailable("initdb/pg_ctl not found (apt-get install postgresql)")
    global _SERVER, _FAILED
    if _FAILED:
        _unavailable(_FAILED)
    if _SERVER is None:
        try:
            _SERVER = PgServer().start()
        except (RuntimeError, OSError) as exc:
            _FAILED = str(exc)
            _unavailable(_FAILED)
        atexit.register(_SERVER.stop)  # one server per test process, whichever folder asks first
    yield _SERVER
