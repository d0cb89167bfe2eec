"""Where things live on disk. Nothing is created at import time."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

APP_NAME = "nmid-desktop"
APP_AUTHOR = "nmid"


def config_dir() -> Path:
    """The user's settings folder (``NMID_CONFIG_DIR`` overrides, for tests and portable installs)."""
    override = os.environ.get("NMID_CONFIG_DIR")
    if override:
        return Path(override)
    return Path(platformdirs.user_config_dir(APP_NAME, APP_AUTHOR))


def data_dir() -> Path:
    """The user's data folder (``NMID_DATA_DIR`` overrides)."""
    override = os.environ.get("NMID_DATA_DIR")
    if override:
        return Path(override)
    return Path(platformdirs.user_data_dir(APP_NAME, APP_AUTHOR))


def cache_dir() -> Path:
    """The user's cache folder (``NMID_CACHE_DIR`` overrides): API responses, thumbnails."""
    override = os.environ.get("NMID_CACHE_DIR")
    if override:
        return Path(override)
    return Path(platformdirs.user_cache_dir(APP_NAME, APP_AUTHOR))


def default_library_dir() -> Path:
    """The library used when neither ``--library`` nor the settings name one."""
    return data_dir() / "library"


def _install_root() -> Path:
    # A PyInstaller build unpacks resources/ and models/ under sys._MEIPASS; a source
    # or editable install has them beside the package.
    frozen = getattr(sys, "_MEIPASS", None)
    return Path(frozen) if frozen else Path(__file__).resolve().parents[2]


def resources_dir() -> Path:
    """The ``resources/`` folder shipped with the package (prompts, prices, icons)."""
    return _install_root() / "resources"


def models_dir() -> Path:
    """The ``models/`` folder holding encoder manifests and small weights."""
    return _install_root() / "models"
