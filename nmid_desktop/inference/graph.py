"""ONNX graphs of encoders: where they live, and when one may be trusted.

A graph ``<name>.onnx`` comes with a sidecar ``<name>.onnx.json`` that records the sha256
of the weights it was exported from and its own sha256. A graph is used only when the
sidecar's weights hash is the manifest's and the file's hash is the sidecar's: a stale
graph (weights retrained) or a corrupt one (truncated copy, edited file) is never run.

Graphs are looked for, in order:

1. beside the manifest (``<manifest folder>/<name>.onnx``): ``nmid train`` writes the
   trained encoder's graph there, and a bundle ships its graphs in its ``models/``;
2. in the user's cache (``<cache>/onnx/<name>-<weights sha256[:16]>.onnx``), where a
   source install exports one at first use (:func:`nmid_desktop.ml.onnx_export.export_graph`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.paths import cache_dir
from nmid_desktop.ml.manifest import EncoderManifest, ManifestError, file_sha256

GRAPH_FORMAT = 1
INPUT_NAME = "x"
OUTPUT_NAME = "features"


class GraphError(NmidError):
    """No trustworthy ONNX graph for an encoder, and none can be made here."""


@dataclass(frozen=True)
class GraphInfo:
    """A verified graph on disk.

    Attributes:
        path: The ``.onnx`` file.
        sha256: Its hash (checked against the sidecar).
        weights_sha256: Hash of the weights it was exported from (the manifest's).
        origin: ``beside manifest``, ``cache`` or ``exported`` (made just now).
    """

    path: Path
    sha256: str
    weights_sha256: str
    origin: str


def sidecar_path(graph: Path) -> Path:
    """``<graph>.json``: the record of what a graph was made from."""
    return graph.with_name(graph.name + ".json")


def beside_manifest_path(manifest: EncoderManifest) -> Path | None:
    """``<manifest folder>/<name>.onnx``, or None for a manifest not read from a file."""
    return manifest.path.parent / f"{manifest.name}.onnx" if manifest.path is not None else None


def cache_graph_path(manifest: EncoderManifest) -> Path:
    """Where a first-use export goes: ``<cache>/onnx/<name>-<weights sha256[:16]>.onnx``."""
    if manifest.sha256 is None:
        raise ManifestError(f"encoder {manifest.name!r} has no trained weights, so it has no graph")
    return cache_dir() / "onnx" / f"{manifest.name}-{manifest.sha256[:16]}.onnx"


def candidate_paths(manifest: EncoderManifest) -> list[tuple[Path, str]]:
    """Graph files to try, in order, with their origin names."""
    found: list[tuple[Path, str]] = []
    beside = beside_manifest_path(manifest)
    if beside is not None:
        found.append((beside, "beside manifest"))
    found.append((cache_graph_path(manifest), "cache"))
    return found


def check_graph(path: Path, manifest: EncoderManifest) -> str | None:
    """Why the graph at ``path`` may not be used for ``manifest`` (None: it may).

    Reads the sidecar and hashes the file; nothing in the graph is trusted before that.
    """
    if not path.is_file():
        return "missing"
    side = sidecar_path(path)
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no record {side.name}"
    except (OSError, ValueError) as exc:
        return f"unreadable record {side.name}: {exc}"
    if not isinstance(record, dict) or record.get("format") != GRAPH_FORMAT:
        return f"record {side.name} is not of format {GRAPH_FORMAT}"
    if record.get("weights_sha256") != manifest.sha256:
        return "stale: exported from other weights"
    if record.get("graph_sha256") != file_sha256(path):
        return "corrupt: its sha256 differs from its record"
    return None


def find_graph(manifest: EncoderManifest) -> tuple[GraphInfo | None, list[str]]:
    """The first trustworthy graph of ``manifest``, and why each earlier candidate was refused.

    Returns:
        ``(info or None, ["<path>: <reason>", ...])``.
    """
    refused: list[str] = []
    for path, origin in candidate_paths(manifest):
        reason = check_graph(path, manifest)
        if reason is None:
            sha = json.loads(sidecar_path(path).read_text(encoding="utf-8"))["graph_sha256"]
            return GraphInfo(path, sha, str(manifest.sha256), origin), refused
        if reason != "missing":
            refused.append(f"{path}: {reason}")
    return None, refused


def can_export() -> bool:
    """True when PyTorch and the ``onnx`` package are installed (an export can be made here)."""
    from nmid_desktop.inference.loader import installed

    return all(installed(name) for name in ("torch", "onnx"))


def ensure_graph(manifest: EncoderManifest) -> GraphInfo:
    """A verified graph for ``manifest``: found on disk, else exported into the cache.

    Raises:
        ManifestError: Untrained encoder, or weights missing/corrupt (export verifies them).
        GraphError: No trustworthy graph and no PyTorch to export one; says what to do.
    """
    if manifest.sha256 is None:
        raise ManifestError(
            f"encoder {manifest.name!r} has no trained weights yet; train it with "
            f"`nmid train --encoder {manifest.name}`"
        )
    info, refused = find_graph(manifest)
    if info is not None:
        return info
    target = cache_graph_path(manifest)
    if not can_export():
        from nmid_desktop.inference.loader import installed

        missing = [n for n in ("torch", "onnx") if not installed(n)]
        where = " or ".join(str(p) for p, _ in candidate_paths(manifest))
        why = f" (refused: {'; '.join(refused)})" if refused else ""
        raise GraphError(
            f"encoder {manifest.name!r} has no ONNX graph for its weights (sha256 {manifest.sha256[:12]}...) "
            f"at {where}{why}, and {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
            f"to export one. Either run `nmid export-graph --encoder {manifest.name}` once in a full install "
            f"(pip install 'nmid-desktop[onnx]', which needs PyTorch) and copy the .onnx file with its "
            f".onnx.json beside the manifest {manifest.path or ''}, or set engine = \"torch\" in the settings "
            f"of a full install."
        )
    return export_in_subprocess(manifest, target)


def export_in_subprocess(manifest: EncoderManifest, target: Path) -> GraphInfo:
    """Export ``manifest``'s graph to ``target`` in a child Python process, then verify it.

    A child keeps torch out of this process (the inference path stays torch-free even in
    a source install), and the exporter's seconds of Python-level tracing out of this
    process's GIL: run in the window's worker thread, an in-process export froze the GUI
    thread for 6 s.

    Raises:
        GraphError: The export failed (its last line of error output is quoted).
    """
    if manifest.path is None:  # not read from a file: nothing a child could read
        from nmid_desktop.ml.onnx_export import export_graph

        return export_graph(manifest, target)
    done = subprocess.run(
        [sys.executable, "-m", "nmid_desktop.ml.onnx_export", str(manifest.path), str(target)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise GraphError(f"exporting encoder {manifest.name!r} to ONNX failed: {last}")
    reason = check_graph(target, manifest)
    if reason is not None:
        raise GraphError(f"exporting encoder {manifest.name!r} to ONNX gave an unusable graph {target}: {reason}")
    record = json.loads(sidecar_path(target).read_text(encoding="utf-8"))
    return GraphInfo(target, record["graph_sha256"], str(manifest.sha256), "exported")
