"""What this install can do: the lab-PC bundle has no PyTorch, a source install has it.

Checked without importing torch (``importlib.util.find_spec``), so asking costs nothing and
the inference path stays torch-free.
"""

from __future__ import annotations

import importlib.util

from nmid_desktop.core.errors import ConfigError

FULL_INSTALL = "the full install from a source checkout: pip install -c constraints.txt . (it brings PyTorch)"


class TorchMissing(ConfigError):
    """A task needs PyTorch (training, exporting a graph), and this install has none."""


def torch_available() -> bool:
    """True when PyTorch can be imported here (found without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        return False


def torch_missing_message(task: str) -> str:
    """Why ``task`` cannot run here, and what to install instead."""
    return f"{task} needs PyTorch, which this install (the lab-PC bundle) does not have; use {FULL_INSTALL}"


def require_torch(task: str) -> None:
    """Raise :class:`TorchMissing`, naming the full install, when PyTorch is not installed.

    Args:
        task: What needs torch, as the start of a sentence (``"Training an encoder"``).
    """
    if not torch_available():
        raise TorchMissing(torch_missing_message(task))
