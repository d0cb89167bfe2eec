"""User settings: one readable TOML file under the platformdirs config folder.

Secrets are never stored here: the API key lives in the environment or the OS
keyring (see ``nmid_desktop.lmm.secrets``). Window geometry is Qt's business and
goes to QSettings, not here.
"""

from __future__ import annotations

import dataclasses
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
    timeout_s: float = 60.0
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
        """Raise :class:`ConfigError` naming the first invalid setting."""
        if not 1 <= self.k <= 50:
            raise ConfigError(f"setting k must be between 1 and 50, not {self.k}")
        if self.strategy not in ("similarity", "random"):
            raise ConfigError(f"setting strategy must be 'similarity' or 'random', not {self.strategy!r}")
        if self.predictor not in ("local", "lmm", "both"):
            raise ConfigError(f"setting predictor must be 'local', 'lmm' or 'both', not {self.predictor!r}")
        if self.local_predictor not in ("knn", "logreg"):
            raise ConfigError(f"setting local_predictor must be 'knn' or 'logreg', not {self.local_predictor!r}")
        if self.engine not in ("auto", "onnxruntime", "torch"):
            raise ConfigError(f"setting engine must be 'auto', 'onnxruntime' or 'torch', not {self.engine!r}")
        if self.max_pixels < 1:
            raise ConfigError("setting max_pixels must be positive")
        if self.lmm.image_detail not in ("low", "high", "auto"):
            raise ConfigError(f"setting lmm.image_detail must be low, high or auto, not {self.lmm.image_detail!r}")
        if self.lmm.max_concurrency < 1 or self.lmm.timeout_s <= 0:
            raise ConfigError("settings lmm.max_concurrency and lmm.timeout_s must be positive")


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
    path = path or settings_path()
    atomic_write_text(path, tomli_w.dumps(dataclasses.asdict(settings)))
    return path
