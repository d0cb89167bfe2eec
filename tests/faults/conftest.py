"""Fixtures of the fault suite: the fake OpenAI server on 127.0.0.1, settings pointing at it, a client.

The fault tests reuse the server of ``tests/lmm`` (extended with HTML, drip and odd-body modes) and
build every hostile input for real: files, FIFOs, symlinks, databases, settings files.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lmm"))

from fake_openai_server import FakeOpenAIServer  # noqa: E402
from lmm_helpers import SECRET  # noqa: E402

from nmid_desktop.core.config import Settings  # noqa: E402
from nmid_desktop.lmm.cache import ResponseCache  # noqa: E402
from nmid_desktop.lmm.client import LmmClient, require_endpoint  # noqa: E402


@pytest.fixture(autouse=True)
def _no_real_keyring() -> Iterator[None]:
    """No test reads or writes the developer's keyring."""
    import keyring
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(previous)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    srv = FakeOpenAIServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def settings(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    s = Settings()
    s.lmm.base_url = server.base_url
    s.lmm.vision_model = "vision-1"
    s.lmm.text_model = "text-1"
    s.lmm.image_model = "image-1"
    s.lmm.timeout_s = 2.0
    s.lmm.max_retries = 1
    s.lmm.max_concurrency = 2
    s.lmm.image_max_side = 128
    return s


@pytest.fixture
def cache(tmp_path: Path) -> ResponseCache:
    return ResponseCache(tmp_path / "cache")


@pytest.fixture
def client(settings: Settings, cache: ResponseCache) -> Iterator[LmmClient]:
    c = LmmClient(require_endpoint(settings.lmm), cache=cache, backoff_s=0.01)
    yield c
    c.close()


@pytest.fixture
def prices(tmp_path: Path):
    from lmm_helpers import PRICES_TOML

    from nmid_desktop.lmm.cost import PriceTable

    path = tmp_path / "prices.toml"
    path.write_text(PRICES_TOML, encoding="utf-8")
    return PriceTable.load(path)


@pytest.fixture
def library(tmp_path: Path):
    """A library of 4 labelled PNGs in 2 classes, imported through the real importer."""
    from lmm_helpers import grey
    from PIL import Image

    from nmid_desktop.core.importer import import_files
    from nmid_desktop.core.jobs import run_job
    from nmid_desktop.core.store import open_library

    folder = tmp_path / "src"
    folder.mkdir()
    store = open_library(tmp_path / "lib")
    for label, seed0 in (("crazing", 0), ("inclusion", 100)):
        paths = []
        for i in range(2):
            path = folder / f"{label}_{i}.png"
            Image.fromarray(grey((96, 80), seed0 + i)).save(path)
            paths.append(path)
        run_job(import_files(store, paths, label=label, detect_bar=False))
    yield store
    store.close()
