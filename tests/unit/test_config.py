from __future__ import annotations

from pathlib import Path

import pytest

from nmid_desktop.core.config import Settings, load_settings, save_settings, settings_path
from nmid_desktop.core.errors import ConfigError


def test_defaults_work_offline_and_nothing_is_written(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.lmm.base_url == ""
    assert settings.predictor == "local"
    assert not settings_path().exists()


def test_round_trip(tmp_path: Path) -> None:
    settings = Settings(k=7, strategy="random")
    settings.lmm.base_url = "http://127.0.0.1:11434/v1"
    settings.lmm.timeout_s = 12.5
    path = save_settings(settings)
    assert path == settings_path()
    loaded = load_settings()
    assert loaded == settings
    assert "api_key" not in path.read_text()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("k = 0\n", "setting k"),
        ("strategy = 'nearest'\n", "setting strategy"),
        ("colour = 'red'\n", "unknown setting colour"),
        ("[lmm]\ntimeout_s = 'soon'\n", "lmm.timeout_s"),
        ("k = [\n", "not valid TOML"),
    ],
)
def test_invalid_settings_name_the_setting(text: str, fragment: str) -> None:
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_settings()


def test_int_accepted_for_float_setting() -> None:
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[lmm]\ntimeout_s = 30\n")
    assert load_settings().lmm.timeout_s == 30.0
