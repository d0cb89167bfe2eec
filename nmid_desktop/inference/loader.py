"""Load an encoder on the right engine: ONNX Runtime on a CPU, PyTorch where CUDA is usable.

``engine`` (the ``engine`` setting, ``nmid --engine``):

* ``auto`` (default): ONNX Runtime when it is installed, unless an NVIDIA driver is
  present and the installed torch can use it (then torch on CUDA). Deciding this imports
  torch only on a machine with an NVIDIA driver, so a lab PC without one never loads it.
* ``onnxruntime``: always ONNX Runtime on the CPU.
* ``torch``: the PyTorch modules of :mod:`nmid_desktop.ml` (CPU or CUDA, ``device``).

Every encoder object reports ``engine`` and ``device`` strings for the status bar.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nmid_desktop.core.errors import ConfigError
from nmid_desktop.ml.manifest import library_models_dir, load_manifest

if TYPE_CHECKING:
    from nmid_desktop.core.config import Settings
    from nmid_desktop.core.store.base import Store

log = logging.getLogger(__name__)

# Frozen ImageNet features averaged over the 8 flips/rotations are the default: they need
# no training, frozen ImageNet CNN features are the strongest published baseline on small
# micrograph sets, and micrographs have no canonical orientation. `nmid evaluate` on NEU's
# hard split: plain 0.978 (logreg) / 0.944 (kNN), +d4 0.983 / 0.994, SimCLR ViT 0.64.
DEFAULT_ENCODER = "efficientnet-lite0-imagenet+d4"
LIBRARY_ENCODER_META = "encoder"
ENGINES = ("auto", "onnxruntime", "torch")


def nvidia_driver_present() -> bool:
    """True when an NVIDIA driver is visible (checked without importing torch or CUDA)."""
    if sys.platform.startswith("linux") and os.path.exists("/proc/driver/nvidia/version"):
        return True
    if sys.platform == "win32":
        system = os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "nvcuda.dll")
        if os.path.exists(system):
            return True
    return shutil.which("nvidia-smi") is not None


def installed(module: str) -> bool:
    """True when ``module`` can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        return False


def resolve_engine(engine: str | None = None, device: str | None = None) -> str:
    """``"onnxruntime"`` or ``"torch"`` for an engine and device preference.

    Raises:
        ConfigError: An unknown engine, a missing package, or ONNX Runtime asked for a GPU.
    """
    choice = (engine or "auto").strip().lower()
    wanted = (device or "auto").strip().lower()
    if choice not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if choice == "onnxruntime":
        if wanted not in ("auto", "cpu"):
            raise ConfigError(f"the onnxruntime engine runs on the CPU; device {device!r} needs engine torch")
        if not installed("onnxruntime"):
            raise ConfigError("engine onnxruntime: the onnxruntime package is not installed (pip install onnxruntime)")
        return "onnxruntime"
    if choice == "torch":
        if not installed("torch"):
            raise ConfigError("engine torch: PyTorch is not installed; use engine onnxruntime or the full install")
        return "torch"
    if wanted not in ("auto", "cpu") or not installed("onnxruntime"):
        return "torch"
    if wanted == "auto" and installed("torch") and nvidia_driver_present():
        import torch  # only here: an NVIDIA driver is present, so CUDA may be worth it

        if torch.cuda.is_available():
            return "torch"
    return "onnxruntime"


def load_encoder(
    name: str | Path,
    *,
    library: Path | None = None,
    device: str | None = None,
    engine: str | None = None,
) -> Any:
    """Load an encoder by name (or manifest path) on the chosen engine, weights verified.

    Args:
        name: Encoder name, e.g. ``efficientnet-lite0-imagenet``, or a manifest ``.json``
            path; ``NAME+VIEWS`` (``+flip``, ``+flips``, ``+d4``) averages over views.
        library: A library folder whose ``models/`` is searched first.
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``... (a GPU means torch).
        engine: One of :data:`ENGINES`; default: ``NMID_ENGINE`` from the environment, else the
            ``engine`` setting (``auto``).

    Returns:
        An encoder (``key``, ``dim``, ``engine``, ``device``, ``embed``, ``embed_prepared``):
        :class:`~nmid_desktop.inference.onnx_encoder.OnnxEncoder` or the torch ``Encoder``,
        wrapped in a ``ViewAveragedEncoder`` for ``+VIEWS``.

    Raises:
        ManifestError: Unknown name, untrained architecture, missing or corrupt weights.
        GraphError: ONNX Runtime chosen but no graph can be found or exported.
        ConfigError: Unknown engine or device, or a device this machine lacks.
    """
    if engine is None:
        engine = os.environ.get("NMID_ENGINE") or None
    if engine is None:
        from nmid_desktop.core.config import load_settings

        engine = load_settings().engine
    resolved = resolve_engine(engine, device)
    if resolved == "torch":
        from nmid_desktop.ml.encoders import load_encoder as load_torch_encoder

        return load_torch_encoder(name, library=library, device=device)
    from nmid_desktop.inference.graph import ensure_graph
    from nmid_desktop.inference.onnx_encoder import OnnxEncoder
    from nmid_desktop.ml.views import ViewAveragedEncoder, split_views

    base, views = split_views(str(name)) if not str(name).endswith(".json") else (str(name), "")
    extra = [library_models_dir(library)] if library is not None else []
    manifest = load_manifest(base, extra)
    graph = ensure_graph(manifest)
    log.debug("encoder %s: graph %s (%s)", manifest.name, graph.path, graph.origin)
    encoder = OnnxEncoder(manifest, graph)
    return ViewAveragedEncoder(encoder, views) if views else encoder


def resolve_encoder_name(store: Store | None = None, settings: Settings | None = None) -> str:
    """The encoder a library uses: its own choice, else the user's setting, else the default.

    ``nmid train --use`` records the library's choice with :func:`set_library_encoder`.
    """
    if store is not None:
        chosen: Any = store.get_meta(LIBRARY_ENCODER_META)
        if isinstance(chosen, str) and chosen:
            return chosen
    if settings is None:
        from nmid_desktop.core.config import load_settings

        settings = load_settings()
    return settings.encoder or DEFAULT_ENCODER


def set_library_encoder(store: Store, name: str) -> None:
    """Make ``name`` the library's encoder (checked to exist, in the library or the repository)."""
    from nmid_desktop.ml.views import split_views

    load_manifest(split_views(name)[0], [library_models_dir(store.root)])
    store.set_meta(LIBRARY_ENCODER_META, name)
