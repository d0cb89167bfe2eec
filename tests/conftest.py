"""Test-wide isolation: settings, data and cache folders point into tmp_path, never the user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offscreen Qt for every test that imports PySide6, set before any Qt import.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared data folder sits beside the checkout (../shared/data); NMID_TEST_DATA points at
# another copy of it (the folder that holds neu_cls/).
DATA_DIR = Path(os.environ.get("NMID_TEST_DATA") or REPO_ROOT.parent / "shared" / "data")
NEU_DIR = DATA_DIR / "neu_cls"
MISSING_DATA = (
    f"the shared NEU images are not at {NEU_DIR}: put the project's shared/ folder beside the checkout "
    "(../shared/data/neu_cls) or set NMID_TEST_DATA to the folder that holds neu_cls/"
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under CI the real-data tests must run: a missing data folder stops the run at once."""
    if _in_ci() and not NEU_DIR.is_dir():
        pytest.exit(f"CI=true and {MISSING_DATA}", returncode=1)


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
    """The shared NEU classification set (read-only). Skipped, saying why, when it is absent outside CI."""
    if not NEU_DIR.is_dir():
        if _in_ci():
            pytest.fail(f"CI=true and {MISSING_DATA}")
        pytest.skip(MISSING_DATA)
    return NEU_DIR
