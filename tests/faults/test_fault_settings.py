"""Settings and output: every setting validated when read (nan, inf, negative, absurd), named in the message."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from nmid_desktop.core.config import load_settings
from nmid_desktop.core.errors import ConfigError
from nmid_desktop.core.text import printable
from nmid_desktop.lmm.cost import BudgetExceeded, BudgetGuard, CostEstimate, check_budget

BAD = [
    ("[lmm]\nbudget_usd = nan\n", "lmm.budget_usd", "finite"),
    ("[lmm]\nbudget_usd = inf\n", "lmm.budget_usd", "finite"),
    ("[lmm]\nbudget_usd = -1.0\n", "lmm.budget_usd", "between"),
    ("[lmm]\nbudget_usd = 1e12\n", "lmm.budget_usd", "between"),
    ("[lmm]\ntimeout_s = nan\n", "lmm.timeout_s", "finite"),
    ("[lmm]\ntimeout_s = -inf\n", "lmm.timeout_s", "finite"),
    ("[lmm]\ntimeout_s = 0.0\n", "lmm.timeout_s", "between"),
    ("[lmm]\ntimeout_s = 1e9\n", "lmm.timeout_s", "between"),
    ("[lmm]\ndeadline_s = nan\n", "lmm.deadline_s", "finite"),
    ("[lmm]\nmax_retries = -1\n", "lmm.max_retries", "between"),
    ("[lmm]\nmax_retries = 100000\n", "lmm.max_retries", "between"),
    ("[lmm]\nmax_concurrency = 0\n", "lmm.max_concurrency", "between"),
    ("[lmm]\nmax_concurrency = 100000\n", "lmm.max_concurrency", "between"),
    ("[lmm]\nimage_max_side = 0\n", "lmm.image_max_side", "between"),
    ("[lmm]\nimage_max_side = 10000000\n", "lmm.image_max_side", "between"),
    ("[lmm]\nbase_url = 'ftp://example.com'\n", "lmm.base_url", "http"),
    ("max_pixels = 0\n", "max_pixels", "between"),
    ("max_pixels = 99999999999999\n", "max_pixels", "between"),
    ("k = 0\n", "setting k", "between"),
    ("k = 1000\n", "setting k", "between"),
    ("[lmm]\nallow_insecure_http = 'yes'\n", "lmm.allow_insecure_http", "bool"),
]


@pytest.mark.parametrize(("text", "name", "why"), BAD)
def test_bad_values_are_refused_with_the_setting_name(tmp_path, text: str, name: str, why: str) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=why) as info:
        load_settings(path)
    assert name in str(info.value)


@hsettings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(["timeout_s", "deadline_s", "budget_usd"]),
    value=st.floats(allow_nan=True, allow_infinity=True),
)
def test_any_float_is_either_sane_or_refused_by_name(tmp_path_factory, name: str, value: float) -> None:
    path = tmp_path_factory.mktemp("cfg") / "settings.toml"
    literal = "nan" if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf else repr(value))
    path.write_text(f"[lmm]\n{name} = {literal}\n", encoding="utf-8")
    try:
        loaded = getattr(load_settings(path).lmm, name)
    except ConfigError as exc:
        assert f"lmm.{name}" in str(exc)
    else:
        assert math.isfinite(loaded) and loaded >= 0


def test_a_nan_budget_can_never_switch_the_cap_off() -> None:
    with pytest.raises(BudgetExceeded):
        check_budget(CostEstimate(cost_usd=0.01), spent_usd=0.0, budget_usd=float("nan"))
    guard = BudgetGuard(float("nan"), 0.0)
    assert guard.reserve(0.01) is False
    assert BudgetGuard(1.0, 0.0).reserve(float("nan")) is False


def test_the_cli_refuses_a_nan_budget_with_one_line(tmp_path) -> None:
    config = tmp_path / "cfg"
    config.mkdir()
    (config / "settings.toml").write_text("[lmm]\nbudget_usd = nan\n", encoding="utf-8")
    env = dict(os.environ, NMID_CONFIG_DIR=str(config))
    run = subprocess.run([sys.executable, "-m", "nmid_desktop.cli", "models"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "lmm.budget_usd" in run.stderr and "Traceback" not in run.stderr


# ----------------------------------------------------------------------------- terminal escapes

@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]0;pwned\x07.png", "\\x1b]0;pwned\\x07.png"),
        ("red\x1b[31m.tif", "red\\x1b[31m.tif"),
        ("a\rb\nc\td", "a\\rb\\nc\\td"),
        ("gpj.\u202eevil.png", "gpj.\\u202eevil.png"),
        ("Ångström µm 電子.png", "Ångström µm 電子.png"),
    ],
)
def test_printable_escapes_what_could_drive_a_terminal(raw: str, shown: str) -> None:
    assert printable(raw) == shown


@hsettings(max_examples=300, deadline=None)
@given(st.text())
def test_printable_output_has_no_control_characters(text: str) -> None:
    import unicodedata

    out = printable(text)
    assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in out)


def test_hostile_file_names_are_printed_escaped_in_reports_and_errors(tmp_path) -> None:
    hostile = tmp_path / "x\x1b]0;owned\x07.png"
    hostile.write_bytes(b"not an image at all")
    # import prints a report line; stats fails on a library path with escapes (the error line).
    for command in (["import", str(hostile), "--library", str(tmp_path / "lib")],
                    ["stats", "--library", str(tmp_path / "no\x1b]0;owned\x07lib")]):
        run = subprocess.run([sys.executable, "-m", "nmid_desktop.cli", *command], capture_output=True, text=True, timeout=120)
        both = run.stdout + run.stderr
        assert "owned" in both  # the file is named ...
        assert "\x1b" not in both and "\x07" not in both  # ... but its escapes do not reach the terminal
