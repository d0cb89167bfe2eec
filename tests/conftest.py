"""Test-wide isolation: settings, data and cache folders point into tmp_path, never the user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offscreen Qt for every test that imports PySide6, set before any Qt import.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO_ROOT = Path(__file__).resolve().parents[1]
NEU_DIR = REPO_ROOT.parent / "shared" / "data" / "neu_cls"


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path_factory.mktemp("nmid-home")
    for name in ("NMID_CONFIG_DIR", "NMID_DATA_DIR", "NMID_CACHE_DIR"):
        monkeypatch.setenv(name, str(base / name.lower()))
    # No test may reach a real endpoint or read the developer's key.
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def neu_dir() -> Path:
    """The shared NEU classification set (read-only). CI always has it beside the checkout."""
    if not NEU_DIR.is_dir():
        raise FileNotFoundError(f"shared data missing: {NEU_DIR} (it must sit beside the checkout)")
    return NEU_DIR
