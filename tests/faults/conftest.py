"""Fixtures of the fault suite: the fake OpenAI server on 127.0.0.1, settings pointing at it, a client.

The fault tests reuse the server and fixtures of ``tests/lmm`` (``lmm_fixtures``; the server is
extended with HTML, drip and odd-body modes) and build every hostile input for real: files,
FIFOs, symlinks, databases, settings files.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lmm"))

import lmm_fixtures  # noqa: E402
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from lmm_fixtures import fake_settings, grey_library  # noqa: E402

from nmid_desktop.core.config import Settings  # noqa: E402
from nmid_desktop.core.store import Store  # noqa: E402

# The shared fixtures, registered here by name (assignments, so parameters named like them are not redefinitions).
_no_real_keyring = lmm_fixtures._no_real_keyring
server = lmm_fixtures.server
cache = lmm_fixtures.cache
client = lmm_fixtures.client
prices = lmm_fixtures.prices


@pytest.fixture
def settings(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The shared fake-server settings with one retry and no budget."""
    return fake_settings(server, monkeypatch, max_retries=1)


@pytest.fixture
def library(tmp_path: Path) -> Iterator[Store]:
    """A library of 4 labelled PNGs in 2 classes, imported through the real importer."""
    store = grey_library(tmp_path, per_class=2, size=(96, 80))
    yield store
    store.close()
