"""The session's PostgreSQL server for the shared-library retrieval test (see tests/library_fixture.py)."""

from __future__ import annotations

from library_fixture import pg_server  # noqa: F401 (a fixture)
