"""The check made before Qt starts: missing X libraries and a missing screen get a line to act on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nmid_desktop.core.display import XCB_PACKAGES, apt_line, missing_libraries, window_problem

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the xcb check is Linux-only")


@pytest.fixture
def elf_missing_a_library(tmp_path: Path) -> Path:
    """A real shared object linked against a library that is then deleted (as on a bare Debian)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or shutil.which("ldd") is None:
        pytest.skip("needs a C compiler and ldd to build the test ELF file")
    (tmp_path / "gone.c").write_text("int gone(void) { return 1; }\n")
    (tmp_path / "uses.c").write_text("int gone(void);\nint uses(void) { return gone(); }\n")
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp_path / "libnmidgone.so.0"), "-Wl,-soname,libnmidgone.so.0",
                    str(tmp_path / "gone.c")], check=True)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp_path / "libuses.so"), str(tmp_path / "uses.c"),
                    str(tmp_path / "libnmidgone.so.0")], check=True)
    (tmp_path / "libnmidgone.so.0").unlink()
    return tmp_path / "libuses.so"


@linux_only
def test_missing_libraries_are_read_from_ldd(elf_missing_a_library: Path):
    assert missing_libraries(elf_missing_a_library) == ["libnmidgone.so.0"]
    assert missing_libraries(Path(sys.executable).resolve()) == []


@linux_only
def test_missing_x_libraries_give_the_apt_line(elf_missing_a_library: Path):
    problem = window_problem({"DISPLAY": ":0"}, plugin=elf_missing_a_library)
    assert problem is not None
    assert "libnmidgone.so.0" in problem and "sudo apt-get install libnmidgone.so.0" in problem
    assert apt_line() in problem  # the whole line the README names


@linux_only
def test_no_screen_and_other_platforms(elf_missing_a_library: Path):
    fine = Path(sys.executable).resolve()
    problem = window_problem({}, plugin=fine)
    assert problem is not None and "DISPLAY" in problem and "QT_QPA_PLATFORM=offscreen" in problem
    assert window_problem({"DISPLAY": ":0"}, plugin=fine) is None
    # offscreen, wayland and the like are left to Qt: nothing to check there
    assert window_problem({"QT_QPA_PLATFORM": "offscreen"}, plugin=elf_missing_a_library) is None
    assert window_problem({"WAYLAND_DISPLAY": "wayland-0"}, plugin=elf_missing_a_library) is None


def test_apt_line_names_debian_packages():
    assert apt_line(["libxcb-icccm4"]) == "sudo apt-get install libxcb-icccm4"
    assert XCB_PACKAGES["libxcb-cursor.so.0"] == "libxcb-cursor0"
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert apt_line().removeprefix("sudo ") in readme


@linux_only
def test_gui_without_a_screen_exits_1_with_a_message_not_an_abort():
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    for cmd in ([sys.executable, "-m", "nmid_desktop", "gui"], [sys.executable, "-m", "nmid_desktop.qt.app"]):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
        assert out.returncode == 1, (cmd, out.returncode, out.stderr[-2000:])
        assert "the window cannot open" in out.stderr
        assert "Could not load the Qt platform plugin" not in out.stderr


def test_python_m_nmid_desktop_is_nmid():
    out = subprocess.run([sys.executable, "-m", "nmid_desktop", "--version"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.startswith("nmid-desktop ")
