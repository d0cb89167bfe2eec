"""Shared by the trust benchmarks: a library's accepted labels with their (cached) embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def add_library_args(parser: argparse.ArgumentParser) -> None:
    """``--library PATH`` (required) and ``--encoder NAME`` (default: the library's)."""
    parser.add_argument("--library", type=Path, required=True, help="library folder (e.g. NEU imported once)")
    parser.add_argument("--encoder", default=None, help="encoder (default: the library's)")


def labelled_vectors(library: Path, encoder_name: str | None = None) -> tuple[np.ndarray, list[str], np.ndarray, str]:
    """``(ids (N,), labels, vectors (N, D), encoder name)`` of every accepted real label.

    Embeddings missing from the library's cache are computed (and cached) first.
    """
    from nmid_desktop.core.config import load_settings
    from nmid_desktop.core.jobs import run_job
    from nmid_desktop.core.store import open_library
    from nmid_desktop.ml.embed import embed_images
    from nmid_desktop.ml.encoders import load_encoder, resolve_encoder_name

    with open_library(library, create=False) as store:
        name = encoder_name or resolve_encoder_name(store, load_settings())
        encoder = load_encoder(name, library=store.root)
        labelled = store.labelled(include_pending=False, include_synthetic=False)
        want = [i for i, _ in labelled]
        got_ids, got_vectors = run_job(embed_images(store, encoder, want))
    row = {int(i): n for n, i in enumerate(np.asarray(got_ids).tolist())}
    keep = [(i, c) for i, c in labelled if i in row]
    ids = np.array([i for i, _ in keep], dtype=np.int64)
    vectors = np.asarray(got_vectors, dtype=np.float32)[[row[int(i)] for i in ids]]
    return ids, [c for _, c in keep], vectors, name
