"""Annoy on PCA-reduced embeddings with an exact re-rank: the index for very large libraries.

Annoy at 1280-d stores every vector in float32 in each item node, so 1M items need about
5 GB mapped (benchmarks/million_index.py). This index keeps the design card's Annoy but
builds it on ``d``-dimensional PCA projections (PCA fitted on the library's own
embeddings; Pearson 1901, scikit-learn's ``PCA`` does the same SVD), which shrinks the
mapped file by ``D / d``. Annoy returns ``rerank`` candidates in the reduced space; their
full vectors, kept as float16 in a memory-mapped ``.npy`` beside the index, are re-scored
with the exact cosine, so the top-k is ranked as the 1280-d search would rank it. Only
the candidate rows are paged in, so resident memory stays near the reduced index's size.

Files beside ``<name>.ann`` (the reduced Annoy forest): ``<name>.pca.npz`` (mean and
components), ``<name>.f16.npy`` (full vectors, Annoy item order) and the sidecar
``<name>.json`` with ``kind = "annoy-pca"``, which records every file's size so a partial
swap is reported as stale, never served. The interface is :class:`AnnoyIndex`'s, so the
:class:`~nmid_desktop.index.searcher.Searcher` (exact buffer, filtering, drift) and the
background rebuild with its atomic swap work unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nmid_desktop.core.errors import LibraryError
from nmid_desktop.core.fileio import atomic_write_text
from nmid_desktop.core.jobs import Job, Progress, ensure_worker_thread
from nmid_desktop.index.annoy_index import (
    DEFAULT_SEARCH_K,
    METRIC,
    AnnoyIndex,
    IndexMeta,
    StaleIndexError,
    annoy_version,
    sidecar_path,
)

if TYPE_CHECKING:
    from annoy import AnnoyIndex as _Annoy

KIND = "annoy-pca"
# Chosen with benchmarks/million_index.py (README, "Large libraries"). At 200k simulated items
# (noisy copies of real embeddings), recall@10 against exact 1280-d search: Annoy 1280-d 0.82;
# PCA-128 + re-rank of 100 / 500 / 1000 candidates 0.52 / 0.87 / 0.98; PCA-256 0.62 / 0.93 / 0.99.
# Recall comes first (the demonstrations are the method); the price is ~20 ms CPU per query.
# At 1M the same settings gave recall 0.77 (0.89 with 2,000 candidates): the targets are not met
# there yet; a denser candidate stage (e.g. an inverted file on the PCA) is the next thing to try.
# The service builds this kind from REDUCED_FROM labelled images on; below it plain Annoy meets
# the targets (0.99 recall, 1 ms at 20k) with a smaller build.
REDUCED_FROM = 100_000
DEFAULT_REDUCED_DIM = 256
DEFAULT_REDUCED_TREES = 50
DEFAULT_RERANK = 1000
DEFAULT_NODES_PER_CANDIDATE = 50
PCA_SAMPLE = 100_000  # rows the PCA is fitted on: the covariance converges long before 1M
_ADD_CHUNK = 4096


def pca_path(ann_path: Path) -> Path:
    """The PCA file beside a reduced index."""
    return Path(ann_path).with_suffix(".pca.npz")


def vectors_path(ann_path: Path) -> Path:
    """The float16 full-vector file beside a reduced index."""
    return Path(ann_path).with_suffix(".f16.npy")


@dataclass(frozen=True)
class ReducedMeta(IndexMeta):
    """The sidecar of a reduced index: :class:`IndexMeta` plus the reduction's files.

    Attributes:
        reduced_dim: PCA components ``d`` the Annoy forest is built on.
        pca_file_size: Bytes of ``<name>.pca.npz``.
        vectors_file_size: Bytes of ``<name>.f16.npy``.
        kind: Always ``annoy-pca`` (an older reader sees an unknown field and rebuilds).
    """

    reduced_dim: int = 0
    pca_file_size: int = 0
    vectors_file_size: int = 0
    kind: str = KIND

    @classmethod
    def read(cls, path: Path) -> ReducedMeta:
        """Read a reduced sidecar; :class:`StaleIndexError` when missing, malformed or another kind."""
        meta = super().read(path)
        if not isinstance(meta, ReducedMeta) or meta.kind != KIND or meta.reduced_dim < 1:
            raise StaleIndexError(f"index sidecar {path} is not a {KIND} index")
        return meta


def sidecar_kind(ann_path: Path) -> str:
    """``annoy-pca`` for a reduced index's sidecar, ``annoy`` otherwise (missing or unreadable too)."""
    try:
        data = json.loads(sidecar_path(ann_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "annoy"
    return str(data.get("kind", "annoy")) if isinstance(data, dict) else "annoy"


@dataclass(frozen=True)
class Pca:
    """A PCA projection. Shapes: ``mean`` (D,), ``components`` (d, D) with orthonormal rows."""

    mean: np.ndarray
    components: np.ndarray
    explained: float  # fraction of the variance the d components keep

    @classmethod
    def fit(cls, vectors: np.ndarray, dim: int, *, sample: int = PCA_SAMPLE, seed: int = 0) -> Pca:
        """Fit on (a sample of) ``vectors`` (N, D) through the D x D covariance's eigenvectors."""
        n, full = vectors.shape
        if not 1 <= dim <= full:
            raise ValueError(f"reduced dimension must be in 1..{full}, not {dim}")
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False)) if n > sample else slice(None)
        x = np.asarray(vectors[rows], dtype=np.float64)
        mean = x.mean(axis=0)
        x -= mean
        cov = x.T @ x / max(1, len(x) - 1)
        values, vecs = np.linalg.eigh(cov)  # ascending
        order = np.argsort(values)[::-1][:dim]
        total = float(values.sum()) or 1.0
        return cls(mean.astype(np.float32), vecs[:, order].T.astype(np.float32), float(values[order].sum() / total))

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Shape (N, D) -> (N, d) float32 (or (D,) -> (d,))."""
        return ((np.asarray(vectors, dtype=np.float32) - self.mean) @ self.components.T).astype(np.float32)

    def save(self, path: Path) -> None:
        """Write to ``path`` (``.npz``)."""
        with open(path, "wb") as fh:
            np.savez(fh, mean=self.mean, components=self.components, explained=np.float64(self.explained))

    @classmethod
    def load(cls, path: Path) -> Pca:
        """Read a file written by :meth:`save`."""
        with np.load(path) as data:
            return cls(data["mean"], data["components"], float(data["explained"]))


class ReducedAnnoyIndex(AnnoyIndex):
    """A memory-mapped Annoy forest on PCA projections, re-ranked with the full vectors.

    Same interface as :class:`AnnoyIndex` (``ids``, ``search``, ``vector``, ``close``);
    ``meta.dim`` is the full embedding size, ``meta.reduced_dim`` the forest's.
    """

    def __init__(self, path: Path, meta: ReducedMeta, annoy_index: _Annoy, pca: Pca, full: np.ndarray) -> None:
        super().__init__(path, meta, annoy_index)
        self.meta: ReducedMeta = meta
        self.pca = pca
        self._full: np.ndarray | None = full
        self.rerank = DEFAULT_RERANK
        # Forest nodes inspected per candidate (Annoy's own default is n_trees): the re-rank
        # repairs the order, so fewer nodes than Annoy's default keep recall at less latency.
        self.nodes_per_candidate = DEFAULT_NODES_PER_CANDIDATE

    @classmethod
    def open(cls, path: Path, *, encoder_key: str | None = None, dim: int | None = None) -> ReducedAnnoyIndex:
        """Map the forest and the full vectors and check them against the sidecar.

        Raises:
            StaleIndexError: A file is missing, truncated, corrupt or built for another encoder.
        """
        from annoy import AnnoyIndex as _Annoy

        path = Path(path)
        meta = ReducedMeta.read(sidecar_path(path))
        if encoder_key is not None and dim is not None:
            problems = meta.problems(encoder_key=encoder_key, dim=dim)
            if problems:
                raise StaleIndexError(f"index {path.name}: " + "; ".join(problems))
        for file, size in ((path, meta.file_size), (pca_path(path), meta.pca_file_size),
                           (vectors_path(path), meta.vectors_file_size)):
            try:
                actual = file.stat().st_size
            except FileNotFoundError as exc:
                raise StaleIndexError(f"index file {file} is missing") from exc
            if actual != size:
                raise StaleIndexError(f"index file {file} has {actual} bytes, the sidecar says {size}")
        try:
            pca = Pca.load(pca_path(path))
            full = np.load(vectors_path(path), mmap_mode="r")
        except (OSError, ValueError, KeyError) as exc:
            raise StaleIndexError(f"index {path.name} is corrupt: {exc}") from exc
        n = len(meta.item_ids)
        if pca.components.shape != (meta.reduced_dim, meta.dim) or full.shape != (n, meta.dim):
            raise StaleIndexError(f"index {path.name}: PCA or vector file does not fit the sidecar")
        handle = _Annoy(meta.reduced_dim, METRIC)
        try:
            handle.load(str(path), prefault=False)
        except OSError as exc:
            raise StaleIndexError(f"index file {path} is corrupt: {exc}") from exc
        if handle.get_n_items() != n:
            handle.unload()
            raise StaleIndexError(f"index file {path} holds {handle.get_n_items()} items, the sidecar lists {n}")
        return cls(path, meta, handle, pca, full)

    def close(self) -> None:
        """Unmap the forest and the vector file."""
        super().close()
        full, self._full = self._full, None
        mm = getattr(full, "_mmap", None)
        del full
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # a view is still alive somewhere: the GC unmaps it later
                pass

    def search(self, query: np.ndarray, n: int, *, search_k: int = DEFAULT_SEARCH_K) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` nearest items: ``rerank`` candidates from the forest, ranked by exact cosine.

        Args:
            query: Shape (D,), L2-normalised (full dimension).
            n: How many to return.
            search_k: Forest nodes to inspect (raised to at least ``candidates * nodes_per_candidate``).

        Returns:
            ``(image_ids (n,) int64, cosine (n,) float32)``, most similar first.
        """
        if self._annoy is None or self._full is None:
            raise LibraryError("the index was closed")
        n = min(int(n), len(self._ids))
        if n <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        wanted = min(len(self._ids), max(n, self.rerank))
        items = self._annoy.get_nns_by_vector(
            self.pca.project(query).tolist(), wanted, search_k=max(int(search_k), wanted * self.nodes_per_candidate)
        )
        rows = np.sort(np.asarray(items, dtype=np.int64))  # sorted: sequential page reads
        sims = np.asarray(self._full[rows], dtype=np.float32) @ query
        top = np.argsort(-sims, kind="stable")[:n]
        return self._ids[rows[top]], sims[top].astype(np.float32)

    def vector(self, image_id: int) -> np.ndarray:
        """The stored full vector (float16 precision), shape (D,)."""
        if self._full is None:
            raise LibraryError("the index was closed")
        return np.asarray(self._full[self._position[int(image_id)]], dtype=np.float32)


def build_reduced_index(
    path: Path,
    ids: Sequence[int] | np.ndarray,
    vectors: np.ndarray,
    *,
    encoder_key: str,
    labels_version: int,
    reduced_dim: int = DEFAULT_REDUCED_DIM,
    n_trees: int = DEFAULT_REDUCED_TREES,
    seed: int = 0,
    install: Callable[[Callable[[], None]], None] | None = None,
) -> Job[ReducedMeta]:
    """Fit the PCA, build the reduced forest and write the full vectors, as a job.

    Everything is written to temporary files in the index folder; ``install`` (as in
    :func:`~nmid_desktop.index.annoy_index.build_index`) gets the function that removes the
    old sidecar, renames the three files into place and writes the new sidecar last.

    Args:
        path: Final ``.ann`` path (usually :func:`~nmid_desktop.index.annoy_index.index_path`).
        ids: Image ids, shape (N,).
        vectors: Embeddings, shape (N, D), L2-normalised.
        encoder_key: Recorded in the sidecar.
        labels_version: ``store.labels_version()`` read before the labels were collected.
        reduced_dim: PCA components (capped at ``min(N, D)``).
        n_trees: Annoy trees.
        seed: PCA sample and Annoy seed.
        install: Swaps the files in under the searcher's lock; default: at once.

    Returns:
        The sidecar written; open the index with :meth:`ReducedAnnoyIndex.open`.
    """
    ensure_worker_thread("index build")
    from annoy import AnnoyIndex as _Annoy

    path = Path(path)
    vectors = np.asarray(vectors, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"vectors must be (N, D) with N = {len(ids)}, got {vectors.shape}")
    if len(ids) == 0:
        raise LibraryError("no labelled images with embeddings: nothing to index")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("image ids must be unique")
    if n_trees < 1:
        raise ValueError("n_trees must be at least 1")
    n, dim = vectors.shape
    d = min(int(reduced_dim), dim, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmps = []
    for suffix in (".ann.tmp", ".pca.npz.tmp", ".f16.npy.tmp"):
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=suffix)
        os.close(fd)
        tmps.append(Path(name))
    tmp_ann, tmp_pca, tmp_vec = tmps
    handle = _Annoy(d, METRIC)
    handle.set_seed(int(seed))
    total = n + 2
    try:
        yield Progress(0, total, f"fitting a {d}-component PCA")
        pca = Pca.fit(vectors, d, seed=seed)
        pca.save(tmp_pca)
        with open(tmp_vec, "wb") as fh:
            np.save(fh, vectors.astype(np.float16))
        yield Progress(1, total, "adding reduced embeddings to the index")
        for start in range(0, n, _ADD_CHUNK):
            block = pca.project(vectors[start : start + _ADD_CHUNK])
            for offset, row in enumerate(block):
                handle.add_item(start + offset, row)
            yield Progress(1 + min(n, start + _ADD_CHUNK), total, "adding reduced embeddings to the index")
        handle.build(int(n_trees), n_jobs=1)
        yield Progress(n + 1, total, f"built {n_trees} trees on {d} dimensions")
        if not handle.save(str(tmp_ann)):
            raise LibraryError(f"could not write {tmp_ann}")
        handle.unload()
        meta = ReducedMeta(
            encoder_key=encoder_key,
            dim=dim,
            n_trees=int(n_trees),
            item_ids=tuple(int(i) for i in ids),
            labels_version=int(labels_version),
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            annoy_version=annoy_version(),
            file_size=tmp_ann.stat().st_size,
            reduced_dim=d,
            pca_file_size=tmp_pca.stat().st_size,
            vectors_file_size=tmp_vec.stat().st_size,
        )

        def move_into_place() -> None:
            side = sidecar_path(path)
            side.unlink(missing_ok=True)
            try:
                os.replace(tmp_pca, pca_path(path))
                os.replace(tmp_vec, vectors_path(path))
                os.replace(tmp_ann, path)
            except PermissionError as exc:  # Windows: another process still maps the old index
                raise LibraryError(f"cannot replace {path}: it is in use ({exc})") from exc
            atomic_write_text(side, meta.to_json())

        (install or (lambda move: move()))(move_into_place)
        yield Progress(total, total, f"indexed {n} images ({d} of {dim} dimensions, {pca.explained:.1%} variance)")
        return meta
    finally:
        handle.unload()
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def open_index(path: Path, *, encoder_key: str | None = None, dim: int | None = None) -> AnnoyIndex:
    """Open whichever kind of index the sidecar at ``path`` describes.

    Raises:
        StaleIndexError: As the kind's ``open``.
    """
    if sidecar_kind(path) == KIND:
        return ReducedAnnoyIndex.open(path, encoder_key=encoder_key, dim=dim)
    return AnnoyIndex.open(path, encoder_key=encoder_key, dim=dim)


__all__ = [
    "DEFAULT_REDUCED_DIM",
    "DEFAULT_RERANK",
    "KIND",
    "REDUCED_FROM",
    "Pca",
    "ReducedAnnoyIndex",
    "ReducedMeta",
    "build_reduced_index",
    "open_index",
    "sidecar_kind",
]
