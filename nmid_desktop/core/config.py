"""User settings: one readable TOML file under the platformdirs config folder.

Secrets are never stored here: the API key lives in the environment or the OS
keyring (see ``nmid_desktop.lmm.secrets``). Window geometry is Qt's business and
goes to QSettings, not here.
"""

from __future__ import annotations

import dataclasses
import getpass
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from nmid_desktop.core.errors import ConfigError
from nmid_desktop.core.fileio import atomic_write_text
from nmid_desktop.core.paths import config_dir

SETTINGS_FILE = "settings.toml"


@dataclass
class LmmSettings:
    """The OpenAI-compatible endpoint. Empty ``base_url`` and no key means offline."""

    base_url: str = ""
    organization: str = ""
    # Seconds one HTTP attempt may take in all (not per read: a server dripping bytes is cut off).
    timeout_s: float = 60.0
    # Seconds one request may take with all its retries and waits.
    deadline_s: float = 300.0
    # Plain http:// to a host that is not this machine sends the key and the images unencrypted:
    # refused unless the user consents here (a lab's own server on the LAN).
    allow_insecure_http: bool = False
    max_concurrency: int = 4
    max_retries: int = 4
    vision_model: str = "gpt-4.1-mini"
    text_model: str = "gpt-4.1-mini"
    image_model: str = "gpt-image-1"
    image_detail: str = "low"
    image_max_side: int = 768
    budget_usd: float = 5.0
    structured_outputs: bool = True


@dataclass
class Settings:
    """Everything the user can change, with built-in defaults that work offline."""

    library: str = ""
    # Your name in a shared library's history (empty: the OS login).
    user: str = ""
    # This PC's mount point of the lab's shared folder (images of a PostgreSQL library).
    shared_folder: str = ""
    encoder: str = ""
    engine: str = "auto"
    k: int = 5
    strategy: str = "similarity"
    predictor: str = "local"
    local_predictor: str = "knn"
    crop_data_bar: bool = True
    max_pixels: int = 400_000_000
    lmm: LmmSettings = field(default_factory=LmmSettings)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting.

        Numbers must be finite and inside a sane range: ``nan`` compares false with
        everything, so a plain ``<`` check would let ``budget_usd = nan`` switch the
        budget off.
        """
        _check_range("k", self.k, 1, 50)
        if self.strategy not in ("similarity", "random"):
            raise ConfigError(f"setting strategy must be 'similarity' or 'random', not {self.strategy!r}")
        if self.predictor not in ("local", "lmm", "both"):
            raise ConfigError(f"setting predictor must be 'local', 'lmm' or 'both', not {self.predictor!r}")
        if self.local_predictor not in ("knn", "logreg"):
            raise ConfigError(f"setting local_predictor must be 'knn' or 'logreg', not {self.local_predictor!r}")
        if self.engine not in ("auto", "onnxruntime", "torch"):
            raise ConfigError(f"setting engine must be 'auto', 'onnxruntime' or 'torch', not {self.engine!r}")
        _check_range("max_pixels", self.max_pixels, 1, MAX_PIXELS_LIMIT)
        lmm = self.lmm
        if lmm.image_detail not in ("low", "high", "auto"):
            raise ConfigError(f"setting lmm.image_detail must be low, high or auto, not {lmm.image_detail!r}")
        _check_range("lmm.timeout_s", lmm.timeout_s, 0.1, 3600.0)
        _check_range("lmm.deadline_s", lmm.deadline_s, 0.1, 86400.0)
        _check_range("lmm.max_concurrency", lmm.max_concurrency, 1, 64)
        _check_range("lmm.max_retries", lmm.max_retries, 0, 20)
        _check_range("lmm.image_max_side", lmm.image_max_side, 16, 8192)
        _check_range("lmm.budget_usd", lmm.budget_usd, 0.0, 1_000_000.0)
        base_url = lmm.base_url.strip()
        if base_url and not base_url.lower().startswith(("http://", "https://")):
            raise ConfigError(f"setting lmm.base_url must start with http:// or https://, not {base_url!r}")


# 400 megapixels is the default; 4 gigapixels is beyond any microscope's frame.
MAX_PIXELS_LIMIT = 4_000_000_000


def _check_range(name: str, value: float, low: float, high: float) -> None:
    """Raise :class:`ConfigError` unless ``low <= value <= high`` and ``value`` is finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"setting {name} must be a number, not {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"setting {name} must be a finite number, not {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"setting {name} must be between {low:g} and {high:g}, not {value!r}")


def current_user(settings: Settings | None = None) -> str:
    """Who is working: the settings' ``user``, else the OS login (recorded on every change)."""
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError:
            settings = Settings()
    if settings.user.strip():
        return settings.user.strip()
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):  # no login name (a container without an /etc/passwd entry)
        return ""


def settings_path() -> Path:
    """The settings file's path (it may not exist yet)."""
    return config_dir() / SETTINGS_FILE


def _merge(target: Any, values: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting {where}{key} in {settings_path()}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"setting {where}{key} must be a table")
            _merge(current, value, f"{where}{key}.")
        else:
            expected = type(current)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"setting {where}{key} must be {expected.__name__}, not {value!r}")
            setattr(target, key, value)


def load_settings(path: Path | None = None) -> Settings:
    """Read the settings file, falling back to defaults for anything not in it."""
    path = path or settings_path()
    settings = Settings()
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
        _merge(settings, data, "")
    settings.validate()
    return settings


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    """Write the settings atomically (a crash never leaves half a file)."""
    settings.validate()
    from nmid_desktop.core.store.location import url_password

    if url_password(settings.library):
        # Settings are a readable file: a database password belongs in .pgpass or the keyring.
        raise ConfigError(
            "the library URL carries a password; settings never store one: remove it from the URL and put it "
            "in the .pgpass file or run `nmid library password URL`"
        )
    path = path or settings_path()
    atomic_write_text(path, tomli_w.dumps(dataclasses.asdict(settings)))
    return path
