"""Class-name validation and filesystem-safe folder names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nmid_desktop.core.errors import LabelError
from nmid_desktop.core.labels import assign_dirnames, safe_dirname, safe_filename, validate_label


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("  particles ", "particles"),
        ("rolled-in_scale", "rolled-in_scale"),
        ("Fe3O4 nanoparticles (cubic)", "Fe3O4 nanoparticles (cubic)"),
        ("e\u0301tch pits", "\u00e9tch pits"),  # NFC: one class however "é" was typed
        ("a.b", "a.b"),
        ("x" * 100, "x" * 100),
    ],
)
def test_validate_label_accepts_and_normalises(name: str, expected: str) -> None:
    assert validate_label(name) == expected


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * 101, "101 characters"),
        ("a/b", "'/'"),
        ("a\\b", "'/'"),
        ("..", "'..'"),
        ("../../etc", "'/'"),
        ("evil..name", "'..'"),
        ("tab\there", "control"),
        ("nul\x00", "control"),
        ("new\nline", "control"),
        ("rtl\u202eoverride", "invisible"),
    ],
)
def test_validate_label_rejects_with_reason(name: str, why: str) -> None:
    with pytest.raises(LabelError, match=re.escape(why)):
        validate_label(name)


def test_validate_label_rejects_non_text() -> None:
    with pytest.raises(LabelError, match="text"):
        validate_label(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("particles", "particles"),
        ("CON", "_CON"),
        ("con", "_con"),
        ("nul.txt", "_nul.txt"),
        ("COM1", "_COM1"),
        ("lpt9", "_lpt9"),
        ("CONSOLE", "CONSOLE"),
        ("a:b", "a_b"),
        ('x<>"|?*y', "x______y"),
        ("trailing. ", "trailing"),
        ("dots...", "dots"),
        ("...", "_"),
        ("", "_"),
        ("..", "_"),
    ],
)
def test_safe_dirname(name: str, expected: str) -> None:
    assert safe_dirname(name) == expected


def test_assign_dirnames_distinct_case_insensitively() -> None:
    names = ["pores", "Pores", "a:b", "a?b", "CON", "_CON", "x"]
    mapping = assign_dirnames(names)
    assert set(mapping) == set(names)
    folded = [d.casefold() for d in mapping.values()]
    assert len(set(folded)) == len(names)
    assert mapping["x"] == "x"
    assert assign_dirnames(reversed(names)) == mapping  # deterministic whatever the order


@pytest.mark.parametrize("name", ["..", ".", "a/../../b", "C:\\Windows", "/etc/passwd", "~", "CON", " . "])
def test_safe_names_stay_inside_a_folder(tmp_path: Path, name: str) -> None:
    for safe in (safe_dirname(name), safe_filename(name)):
        assert "/" not in safe and "\\" not in safe and safe not in ("", ".", "..")
        assert (tmp_path / safe).resolve().parent == tmp_path.resolve()
