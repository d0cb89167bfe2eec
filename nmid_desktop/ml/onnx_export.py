"""Export an encoder's verified weights to an ONNX graph (needs torch and the ``onnx`` package).

The graph is the network exactly as the torch inference path runs it (for EfficientNet
the copy with BatchNorm folded into the convolutions): ``x`` ``(B, C, S, S)`` float32,
already normalised, -> ``features`` ``(B, D)`` float32, not yet L2-normalised. The batch
axis is dynamic. The TorchScript exporter (``dynamo=False``) is used: it writes one
self-contained file in ~5 s for EfficientNet-Lite0, where the dynamo exporter took ~19 s
and splits the weights into a second ``.onnx.data`` file; both agreed with torch to 1e-5.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from nmid_desktop.core.fileio import atomic_write_text
from nmid_desktop.inference.graph import GRAPH_FORMAT, INPUT_NAME, OUTPUT_NAME, GraphError, GraphInfo, sidecar_path
from nmid_desktop.ml.encoders import _for_inference, build_network
from nmid_desktop.ml.manifest import EncoderManifest, file_sha256

OPSET = 17


def export_graph(manifest: EncoderManifest, target: Path) -> GraphInfo:
    """Export ``manifest``'s network to ``target`` (``.onnx``) and write its sidecar record.

    The weights are verified against the manifest's sha256 first. The graph is written to
    a temporary file and moved into place before the record naming its hash, so a crash
    leaves either no graph or one whose record does not match (refused, re-exported).

    Raises:
        ManifestError: Untrained encoder or missing/corrupt weights.
        GraphError: The ``onnx`` package is missing, or the export failed.
    """
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise GraphError(
            f"exporting encoder {manifest.name!r} to ONNX needs the onnx package: pip install onnx"
        ) from None
    network = _for_inference(build_network(manifest)).eval()
    size, channels = manifest.input_size, manifest.channels
    example = torch.zeros(2, channels, size, size)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".onnx.tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation notes are not the user's business
            torch.onnx.export(
                network,
                (example,),
                tmp,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                dynamo=False,
            )
        sha = file_sha256(Path(tmp))
        os.replace(tmp, target)
    except Exception as exc:  # the exporter raises many kinds; the user gets one clear line
        raise GraphError(f"exporting encoder {manifest.name!r} to ONNX failed: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    record = {
        "format": GRAPH_FORMAT,
        "encoder": manifest.name,
        "architecture": manifest.architecture,
        "weights_sha256": manifest.sha256,
        "graph_sha256": sha,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "input_shape": ["batch", channels, size, size],
        "embedding_dim": manifest.embedding_dim,
        "opset": OPSET,
        "exported_by": f"torch {torch.__version__}",
    }
    atomic_write_text(sidecar_path(target), json.dumps(record, indent=2) + "\n")
    return GraphInfo(target, sha, str(manifest.sha256), "exported")


def export_beside_manifest(manifest: EncoderManifest) -> GraphInfo:
    """Export to ``<manifest folder>/<name>.onnx`` (``nmid train``, bundle builds), in a child process."""
    from nmid_desktop.inference.graph import export_in_subprocess

    if manifest.path is None:
        raise GraphError(f"encoder {manifest.name!r} was not read from a file; no folder to write its graph to")
    return export_in_subprocess(manifest, manifest.path.parent / f"{manifest.name}.onnx")


def main(argv: list[str] | None = None) -> int:
    """``python -m nmid_desktop.ml.onnx_export MANIFEST TARGET``: export in a child process.

    :func:`nmid_desktop.inference.graph.export_in_subprocess` runs this, so the exporter
    neither loads torch into an inference process nor holds its GIL.
    """
    import sys

    from nmid_desktop.core.errors import NmidError
    from nmid_desktop.ml.manifest import read_manifest_file

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m nmid_desktop.ml.onnx_export MANIFEST.json TARGET.onnx", file=sys.stderr)
        return 2
    try:
        export_graph(read_manifest_file(Path(args[0])), Path(args[1]))
    except NmidError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
