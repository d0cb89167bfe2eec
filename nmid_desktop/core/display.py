"""Can the window open here? A check made before Qt is loaded, because Qt aborts the process.

When Qt's platform plugin cannot load (a bare Debian lacks some X libraries) or finds no
screen, Qt prints "Could not load the Qt platform plugin" and calls ``abort()``: no Python
handler runs. So ``nmid gui`` and ``nmid-desktop`` ask this module first and print a line
the user can act on (the exact ``apt-get install``) instead.

The check reads the xcb plugin's dependencies with ``ldd`` (it does not load the plugin
into this process) and maps each missing library to its Debian/Ubuntu package.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

# Every shared library outside Qt that Qt's xcb platform plugin (and the Qt libraries it pulls
# in) links against, with its Debian 12 / Ubuntu package: read off `ldd libqxcb.so` of
# PySide6 6.x. The README's apt-get line is this table's values.
XCB_PACKAGES: dict[str, str] = {
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
}

_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


def apt_line(packages: list[str] | None = None) -> str:
    """The ``apt-get install`` command for ``packages`` (default: all the window needs)."""
    names = packages if packages is not None else sorted(set(XCB_PACKAGES.values()))
    return "sudo apt-get install " + " ".join(names)


def xcb_plugin_path() -> Path | None:
    """Where PySide6's xcb platform plugin lies, found without importing PySide6."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        plugin = Path(base) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
        if plugin.is_file():
            return plugin
    return None


def missing_libraries(binary: Path) -> list[str]:
    """Shared libraries that ``binary`` needs and the dynamic loader cannot find.

    Args:
        binary: A shared object or executable (ELF).

    Returns:
        Library names (sonames) that ``ldd`` reports as "not found", in its order, each once;
        an empty list when all are found or when ``ldd`` is not available (non-glibc systems:
        there Qt's own message is the best we have).
    """
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    try:
        out = subprocess.run(
            [ldd, str(binary)], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return list(dict.fromkeys(_NOT_FOUND.findall(out)))


def _platform_requested(env: Mapping[str, str]) -> str:
    return env.get("QT_QPA_PLATFORM", "").split(":", 1)[0].split(";", 1)[0].strip().lower()


def window_problem(env: Mapping[str, str] | None = None, plugin: Path | None = None) -> str | None:
    """Why the window cannot open here, in words a user can act on; None when it can.

    Only Linux's X11 path is checked (Windows and macOS plugins ship what they need; the
    offscreen, wayland and other platforms are left to Qt).

    Args:
        env: The environment to judge (default: this process's).
        plugin: The xcb plugin to check (default: PySide6's).
    """
    env = os.environ if env is None else env
    if not sys.platform.startswith("linux"):
        return None
    platform = _platform_requested(env)
    if platform not in ("", "xcb"):
        return None
    if platform == "" and env.get("WAYLAND_DISPLAY"):
        return None  # Qt picks its Wayland plugin there
    plugin = plugin if plugin is not None else xcb_plugin_path()
    if plugin is not None:
        missing = missing_libraries(plugin)
        if missing:
            packages = [XCB_PACKAGES.get(name, name) for name in missing]
            return (
                "the window cannot open: Qt's X11 (xcb) platform plugin needs libraries this system "
                f"lacks: {', '.join(missing)}.\n"
                f"Install them with:\n    {apt_line(packages)}\n"
                f"(everything the window needs on Debian/Ubuntu:\n    {apt_line()})"
            )
    if not env.get("DISPLAY"):
        return (
            "the window cannot open: no screen (DISPLAY is not set). Run it from a desktop session, "
            "or set QT_QPA_PLATFORM=offscreen to run without one (nothing is shown)."
        )
    return None
