"""Lint and types as tools, run by the test command: ruff, mypy, and no ``Any`` in the headless layers' public API.

import-linter's contracts are checked in ``test_architecture.py``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TYPED_PACKAGES = ("core", "index", "predict", "workspace")


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def test_ruff_is_clean() -> None:
    result = subprocess.run([_tool("ruff"), "check", "nmid_desktop", "tests", "benchmarks", "scripts"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_mypy_is_clean_on_the_typed_layers() -> None:
    # The files and strictness are pyproject's [tool.mypy]; the cache goes to a private folder.
    result = subprocess.run([_tool("mypy"), "--cache-dir", str(REPO / ".mypy_cache")], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def _public_functions(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    found: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                if not child.name.startswith("_") or child.name == "__init__":
                    found.append((prefix + child.name, child))

    visit(tree, "")
    return found


def test_no_any_in_public_signatures_of_the_typed_layers() -> None:
    offenders = []
    for package in TYPED_PACKAGES:
        for path in sorted((REPO / "nmid_desktop" / package).rglob("*.py")):
            for name, fn in _public_functions(ast.parse(path.read_text(encoding="utf-8"))):
                args = fn.args
                annotations = [a.annotation for a in [*args.posonlyargs, *args.args, *args.kwonlyargs] if a.annotation]
                annotations += [a.annotation for a in (args.vararg, args.kwarg) if a is not None and a.annotation]
                if fn.returns is not None:
                    annotations.append(fn.returns)
                for annotation in annotations:
                    if "Any" in re.findall(r"\w+", ast.unparse(annotation)):
                        offenders.append(f"{path.relative_to(REPO)}:{fn.lineno} {name}: {ast.unparse(annotation)}")
    assert offenders == [], "\n".join(offenders)
