"""Fixtures shared by ``tests/lmm`` and ``tests/faults``: the fake server, settings on it, a client, a library.

Both conftests import the fixtures from here (a uniquely named module, not ``conftest``) and
set only what differs: the retry count and budget of their settings, the size of their library.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer
from lmm_helpers import PRICES_TOML, SECRET, grey
from PIL import Image

from nmid_desktop.core.config import Settings
from nmid_desktop.core.store import Store
from nmid_desktop.lmm.cache import ResponseCache
from nmid_desktop.lmm.client import LmmClient, require_endpoint
from nmid_desktop.lmm.cost import PriceTable


@pytest.fixture(autouse=True)
def _no_real_keyring() -> Iterator[None]:
    """No test reads or writes the developer's keyring: the 'fail' backend, as on a headless box."""
    import keyring
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(previous)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    """A fresh fake endpoint per test."""
    srv = FakeOpenAIServer().start()
    yield srv
    srv.stop()


def fake_settings(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, *, max_retries: int) -> Settings:
    """Settings pointing at the fake server, with short timeouts, and the secret key in the environment."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    s = Settings()
    s.lmm.base_url = server.base_url
    s.lmm.vision_model = "vision-1"
    s.lmm.text_model = "text-1"
    s.lmm.image_model = "image-1"
    s.lmm.timeout_s = 2.0
    s.lmm.max_retries = max_retries
    s.lmm.max_concurrency = 2
    s.lmm.image_max_side = 128
    return s


@pytest.fixture
def cache(tmp_path: Path) -> ResponseCache:
    """The test's private response cache."""
    return ResponseCache(tmp_path / "cache")


@pytest.fixture
def client(settings: Settings, cache: ResponseCache) -> Iterator[LmmClient]:
    """A client on the fake server with the private cache and millisecond backoff."""
    c = LmmClient(require_endpoint(settings.lmm), cache=cache, backoff_s=0.01)
    yield c
    c.close()


@pytest.fixture
def prices(tmp_path: Path) -> PriceTable:
    """The test price table (``lmm_helpers.PRICES_TOML``)."""
    path = tmp_path / "prices.toml"
    path.write_text(PRICES_TOML, encoding="utf-8")
    return PriceTable.load(path)


def grey_library(tmp_path: Path, per_class: int, size: tuple[int, int]) -> Store:
    """A library of ``per_class`` random grey PNGs of ``size`` (W, H) in classes crazing and inclusion."""
    from nmid_desktop.core.importer import import_files
    from nmid_desktop.core.jobs import run_job
    from nmid_desktop.core.store import open_library

    folder = tmp_path / "src"
    folder.mkdir()
    store = open_library(tmp_path / "lib")
    for label, seed0 in (("crazing", 0), ("inclusion", 100)):
        paths = []
        for i in range(per_class):
            path = folder / f"{label}_{i}.png"
            Image.fromarray(grey(size, seed0 + i)).save(path)
            paths.append(path)
        run_job(import_files(store, paths, label=label, detect_bar=False))
    return store
