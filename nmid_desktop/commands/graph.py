"""``nmid export-graph``: write an encoder's ONNX graph (for the torch-free onnxruntime engine)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nmid_desktop.commands._common import add_library_arg, library_path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``nmid export-graph``."""
    parser = subparsers.add_parser(
        "export-graph",
        help="export an encoder's ONNX graph, for PCs or bundles without PyTorch",
        description=(
            "Export the encoder's verified weights to an ONNX graph with its record (<name>.onnx and "
            "<name>.onnx.json, holding the weights' and the graph's sha256). By default it goes to the user's "
            "cache, where the onnxruntime engine looks (a source install does this by itself at first use); "
            "with --out, into that folder: copy both files beside the encoder's manifest on a PC without "
            "PyTorch. Needs PyTorch and the onnx package."
        ),
    )
    parser.add_argument("--encoder", metavar="NAME", default=None,
                        help="encoder (default: the library's); a +VIEWS suffix is ignored: views share a graph")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="folder to write the graph into")
    add_library_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export, then print the graph's path and sha256."""
    from nmid_desktop.core.config import load_settings
    from nmid_desktop.core.store import open_library
    from nmid_desktop.inference.graph import cache_graph_path, ensure_graph
    from nmid_desktop.inference.loader import resolve_encoder_name
    from nmid_desktop.ml.manifest import library_models_dir, load_manifest
    from nmid_desktop.ml.views import split_views

    settings = load_settings()
    library = library_path(args, settings)
    name = args.encoder
    if name is None:
        if (library / "library.sqlite").is_file():
            with open_library(library, create=False) as store:
                name = resolve_encoder_name(store, settings)
        else:
            name = resolve_encoder_name(None, settings)
    extra = [library_models_dir(library)] if library.is_dir() else []
    manifest = load_manifest(split_views(name)[0], extra)
    if args.out is not None:
        from nmid_desktop.core.capabilities import require_torch

        require_torch("Exporting an ONNX graph")  # before ml.onnx_export, which imports torch
        from nmid_desktop.ml.onnx_export import export_graph

        info = export_graph(manifest, Path(args.out) / f"{manifest.name}.onnx")
    else:
        target = cache_graph_path(manifest)
        info = ensure_graph(manifest)
        if info.path != target:
            print(f"{manifest.name}: a verified graph already lies at {info.path}")
    print(f"{info.path} sha256 {info.sha256} (weights sha256 {info.weights_sha256[:12]}..., {info.origin})")
    return 0
