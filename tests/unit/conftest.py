"""Store backends for the contract tests: SQLite always, PostgreSQL on a real throwaway server.

One PostgreSQL cluster per test session (tests/pg_server.py: initdb in a temp folder,
127.0.0.1 on a free port, run as the ``postgres`` user under root); each test gets a
fresh database. Without a server outside CI the PostgreSQL cases skip with the reason;
with ``CI=true`` they fail, so CI can never pass by skipping them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from library_fixture import Library, make_library, pg_server  # noqa: F401 (a fixture)

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def library(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Library]:
    """A fresh library on each backend; every store opened through it is closed afterwards."""
    lib = make_library(request.param, tmp_path, request)
    yield lib
    for store in lib.stores:
        store.close()


@pytest.fixture
def pg_library(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Library]:
    """A fresh PostgreSQL library (for the tests of what only a shared library does)."""
    lib = make_library("postgresql", tmp_path, request)
    yield lib
    for store in lib.stores:
        store.close()
