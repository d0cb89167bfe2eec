"""The ``Library`` handle the store tests open stores through (SQLite folder or PostgreSQL URL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
