"""Fixtures for the multimodal-model tests: a fake OpenAI server on 127.0.0.1, settings, a small library.

The server, client, cache and price fixtures live in ``lmm_fixtures`` (shared with ``tests/faults``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lmm_fixtures  # noqa: E402
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from lmm_fixtures import fake_settings, grey_library  # noqa: E402
from lmm_helpers import SECRET, grey  # noqa: E402

from nmid_desktop.core.config import Settings  # noqa: E402
from nmid_desktop.core.store import Store  # noqa: E402

__all__ = ["SECRET", "grey"]

# The shared fixtures, registered here by name (assignments, so parameters named like them are not redefinitions).
_no_real_keyring = lmm_fixtures._no_real_keyring
server = lmm_fixtures.server
cache = lmm_fixtures.cache
client = lmm_fixtures.client
prices = lmm_fixtures.prices


@pytest.fixture
def settings(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The shared fake-server settings, two retries, a $5 budget and k = 3."""
    s = fake_settings(server, monkeypatch, max_retries=2)
    s.lmm.budget_usd = 5.0
    s.k = 3
    return s


@pytest.fixture
def library(tmp_path: Path) -> Iterator[Store]:
    """A library of 8 images in 2 classes, imported through the real importer.

    Image 1 is 200 x 160 with a crop box (0, 0, 200, 120): a 40-pixel data bar at the bottom.
    """
    store = grey_library(tmp_path, per_class=4, size=(200, 160))
    first = store.images()[0]
    store.set_crop_box(first.id, (0, 0, 200, 120))
    yield store
    store.close()
