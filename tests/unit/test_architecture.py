"""The package's shape: import-linter's contracts (Qt only in qt/, the layers), no torch in core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_qt_only_in_qt_package() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Qt lives in nmid_desktop.qt only KEPT" in result.stdout
    assert "Layers, from the faces down to core KEPT" in result.stdout


def test_core_does_not_import_torch_at_module_level() -> None:
    code = (
        "import sys, nmid_desktop.core.config, nmid_desktop.core.jobs, nmid_desktop.core.paths;"
        "import nmid_desktop.core.images, nmid_desktop.core.store, nmid_desktop.core.importer;"
        "import nmid_desktop.workspace.library, nmid_desktop.workspace.browse;"
        "print('torch' in sys.modules, 'PySide6' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
