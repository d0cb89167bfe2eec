"""Fixtures for the multimodal-model tests: a fake OpenAI server on 127.0.0.1, settings, a small library."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_openai_server import FakeOpenAIServer  # noqa: E402
from lmm_helpers import PRICES_TOML, SECRET, grey  # noqa: E402

from nmid_desktop.core.config import Settings  # noqa: E402
from nmid_desktop.lmm.cache import ResponseCache  # noqa: E402
from nmid_desktop.lmm.client import LmmClient, require_endpoint  # noqa: E402
from nmid_desktop.lmm.cost import PriceTable  # noqa: E402

__all__ = ["SECRET", "grey"]


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


@pytest.fixture
def settings(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings pointing at the fake server, with short timeouts, and the secret key in the environment."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    s = Settings()
    s.lmm.base_url = server.base_url
    s.lmm.vision_model = "vision-1"
    s.lmm.text_model = "text-1"
    s.lmm.image_model = "image-1"
    s.lmm.timeout_s = 2.0
    s.lmm.max_retries = 2
    s.lmm.max_concurrency = 2
    s.lmm.image_max_side = 128
    s.lmm.budget_usd = 5.0
    s.k = 3
    return s


@pytest.fixture
def prices(tmp_path: Path) -> PriceTable:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES_TOML, encoding="utf-8")
    return PriceTable.load(path)


@pytest.fixture
def client(settings: Settings, tmp_path: Path) -> Iterator[LmmClient]:
    """A client on the fake server with a private cache and millisecond backoff."""
    c = LmmClient(require_endpoint(settings.lmm), cache=ResponseCache(tmp_path / "cache"), backoff_s=0.01)
    yield c
    c.close()


@pytest.fixture
def library(tmp_path: Path):
    """A library of 8 images in 2 classes, imported through the real importer.

    Image 1 is 200 x 160 with a crop box (0, 0, 200, 120): a 40-pixel data bar at the bottom.
    """
    from nmid_desktop.core.importer import import_files
    from nmid_desktop.core.jobs import run_job
    from nmid_desktop.core.store import open_library

    folder = tmp_path / "src"
    folder.mkdir()
    store = open_library(tmp_path / "lib")
    for label, seed0 in (("crazing", 0), ("inclusion", 100)):
        paths = []
        for i in range(4):
            array = grey((200, 160), seed0 + i)
            path = folder / f"{label}_{i}.png"
            Image.fromarray(array).save(path)
            paths.append(path)
        run_job(import_files(store, paths, label=label, detect_bar=False))
    first = store.images()[0]
    store.set_crop_box(first.id, (0, 0, 200, 120))
    yield store
    store.close()
