"""The lab-PC bundle's spec, cheaply: what it leaves out, and that the app needs none of it.

The real build and its smoke test (packaging/build_bundle.sh, packaging/smoke_test.sh) take
minutes and stay out of the test command; these checks catch an import that would drag torch
back into the bundle, or one the bundle would miss.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"


def _excludes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bundle_excludes", PACKAGING / "bundle_excludes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_and_export_only_packages_are_left_out() -> None:
    ex = _excludes()
    for name in ("torch", "torch.nn.functional", "torchvision", "triton", "nvidia.cudnn", "timm", "onnx",
                 "onnxscript", "PySide6.QtWebEngineCore", "PySide6.QtQml", "PySide6.Qt3DCore",
                 "PySide6.QtMultimedia"):
        assert ex.is_excluded(name), name
    for name in ("onnxruntime", "nmid_desktop.inference.loader", "PySide6.QtWidgets", "PySide6.QtSvg",
                 "sklearn", "annoy", "onnxruntime.capi", "torchlike"):
        assert not ex.is_excluded(name), name
    assert ex.forbidden_binary("torch/lib/libtorch_cpu.so")
    assert ex.forbidden_binary("nvidia/cudnn/lib/libcudnn.so.9")
    assert not ex.forbidden_binary("onnxruntime/capi/libonnxruntime.so.1")


def test_spec_parses_and_builds_two_executables_from_the_exclusion_list() -> None:
    tree = ast.parse((PACKAGING / "nmid-desktop.spec").read_text(encoding="utf-8"))
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert {"EXCLUDES", "forbidden_binary", "COLLECT"} <= names
    exe_names = {
        kw.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "EXE"
        for kw in node.keywords
        if kw.arg == "name" and isinstance(kw.value, ast.Constant)
    }
    assert exe_names == {"nmid-desktop", "nmid"}
    assert (PACKAGING / "nmid-desktop.ico").stat().st_size > 1000  # the Windows branch's icon


def test_window_and_commands_import_nothing_the_bundle_leaves_out() -> None:
    # Module level only: what runs in the bundle when the window opens and a command is parsed.
    code = (
        "import sys, runpy\n"
        "sys.path.insert(0, 'packaging')\n"
        "from bundle_excludes import is_excluded\n"
        "import nmid_desktop.cli as cli\n"
        "cli.build_parser()\n"
        "import nmid_desktop.qt.app, nmid_desktop.qt.main_window\n"
        "import nmid_desktop.inference.loader, nmid_desktop.inference.onnx_encoder, nmid_desktop.ml.views\n"
        "import nmid_desktop.ml.embed, nmid_desktop.workspace.training, nmid_desktop.workspace.engine\n"
        "print(sorted(m for m in sys.modules if is_excluded(m)))\n"
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_training_without_torch_names_the_full_install(tmp_path: Path) -> None:
    # sys.modules["torch"] = None is how Python marks a module as not importable: the
    # same answer find_spec gives in the bundle, where torch was never collected.
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from pathlib import Path\n"
        "from nmid_desktop.core.capabilities import TorchMissing\n"
        "from nmid_desktop.workspace.training import TrainingRequest, training_job, training_unavailable\n"
        "print(training_unavailable())\n"
        "try:\n"
        f"    next(training_job(Path({str(tmp_path)!r}), TrainingRequest(encoder_name='micrograph-vit')))\n"
        "except TorchMissing as exc:\n"
        "    print('refused:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first.startswith("Training an encoder needs PyTorch") and "pip install -c constraints.txt ." in first
    assert second.startswith("refused: Training an encoder needs PyTorch")
