"""An inverted file with int8 full vectors (faiss): the index for libraries of 100,000 images and more.

Why not the PCA forest (:mod:`~nmid_desktop.index.reduced`) at that size: near-duplicate
micrographs (many acquisitions of one field, or the benchmark's noisy copies of one source)
are nearly equidistant from a query, and which of them make the exact top-10 is decided by
directions outside any PCA subspace; every near-duplicate of the nearest fields must be
scored with the full vector. An inverted file does exactly that (Jégou, Douze and Schmid,
"Product quantization for nearest neighbor search", TPAMI 2011, the IVF stage): k-means on a
sample gives ``nlist`` coarse centroids, every item is stored in the list of its nearest
centroid, and a query scores ALL members of its ``nprobe`` nearest lists with their full
1280-d vectors, kept as per-dimension int8 scalar-quantised codes of the residual to the
centroid (1.28 KB per item: 1.3 GB at 1M items, inside the 2 GB RAM target; float32 would be
5.1 GB). The int8 scores are within about 1e-3 of the exact cosine, which is as close as
near-duplicates are to one another, so the best ``rerank`` of them are re-scored with the
exact cosine of float16 full vectors in a file beside the index, of which only those rows
are read (100 reads of 2.5 KB per query, from the page cache or the disk; the file is not
mapped, so the OS's read-ahead does not pull the rest of it into this process). At 200k simulated items the int8 scan alone stops at
recall@10 0.97 however many lists are probed (benchmarks/million_index.py).

faiss (https://github.com/facebookresearch/faiss, ``IndexIVFScalarQuantizer``) does the
k-means, the lists and the SIMD scan; it is an optional dependency (the ``large`` extra).
Without it :func:`~nmid_desktop.index.sizes.build_for_size` falls back to the PCA forest.

Files: ``<name>.ann`` holds the faiss index (the name is the library's usual index path),
``<name>.f16.npy`` the float16 full vectors (item order) and the sidecar ``<name>.json`` has
``kind = "faiss-ivf-sq8"`` and both files' sizes, so a missing or truncated file is reported as
stale (rebuilt), never served. The interface is
:class:`~nmid_desktop.index.annoy_index.AnnoyIndex`'s, so the
:class:`~nmid_desktop.index.searcher.Searcher` (exact buffer, filtering, drift) and the
background rebuild with its atomic swap work unchanged.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nmid_desktop.core.errors import LibraryError
from nmid_desktop.core.fileio import atomic_write_text
from nmid_desktop.core.jobs import Job, Progress, ensure_worker_thread
from nmid_desktop.index.annoy_index import DEFAULT_SEARCH_K, AnnoyIndex, IndexMeta, StaleIndexError, sidecar_path
from nmid_desktop.index.reduced import vectors_path

if TYPE_CHECKING:
    import faiss as _faiss

KIND = "faiss-ivf-sq8"
# Chosen with benchmarks/million_index.py (README, "Large libraries"). At 1M simulated items,
# 1,024 lists, 100 re-ranked, probing 8 / 16 / 32 lists: recall@10 0.956 / 0.994 / 0.998 against
# exact 1280-d search, CPU p95 8.2 / 11.4 / 17.4 ms per query, 1.4 GB resident. Without the
# re-rank: 0.937 / 0.971 / 0.976. 8 is the most that keeps the 10 ms target; a caller that can
# afford 11 ms for 0.99 sets ``index.nprobe = 16``.
DEFAULT_NPROBE = 8
DEFAULT_RERANK = 100  # int8 candidates re-scored with the exact cosine (0: none)
TRAIN_PER_LIST = 40  # k-means sample: 40 items per centroid (faiss warns below 39)
TRAIN_MAX = 100_000
_ADD_CHUNK = 20_000
_MISSING = 'faiss-cpu is not installed: pip install "nmid-desktop[large]"'


def faiss_available() -> bool:
    """True when faiss can be imported (the ``large`` extra is installed)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def default_nlist(n: int) -> int:
    """Coarse lists for ``n`` items: the power of two nearest ``sqrt(n)``, from 16 to 4096."""
    return int(min(4096, max(16, 2 ** round(math.log2(max(1.0, math.sqrt(n)))))))


@dataclass(frozen=True)
class IvfMeta(IndexMeta):
    """The sidecar of an inverted-file index: :class:`IndexMeta` plus its lists.

    ``n_trees`` is 0 (no forest); ``annoy_version`` holds the faiss version that wrote the file.

    Attributes:
        nlist: Coarse centroids (inverted lists).
        vectors_file_size: Bytes of ``<name>.f16.npy``.
        kind: Always ``faiss-ivf-sq8`` (an older reader sees an unknown field and rebuilds).
    """

    nlist: int = 0
    vectors_file_size: int = 0
    kind: str = KIND

    @classmethod
    def read(cls, path: Path) -> IvfMeta:
        """Read an IVF sidecar; :class:`StaleIndexError` when missing, malformed or another kind."""
        meta = super().read(path)
        if not isinstance(meta, IvfMeta) or meta.kind != KIND or meta.nlist < 1:
            raise StaleIndexError(f"index sidecar {path} is not a {KIND} index")
        return meta


def is_ivf_sidecar(ann_path: Path) -> bool:
    """True when the sidecar beside ``ann_path`` describes an inverted-file index."""
    try:
        data = json.loads(sidecar_path(ann_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("kind") == KIND


class IvfIndex(AnnoyIndex):
    """A faiss ``IndexIVFScalarQuantizer`` (int8, inner product) whose items are library image ids.

    Same interface as :class:`AnnoyIndex` (``ids``, ``search``, ``vector``, ``close``). Queries
    are thread-safe (faiss searches only read the index). ``nprobe`` may be changed per index.
    """

    def __init__(self, path: Path, meta: IvfMeta, handle: _faiss.IndexIVFScalarQuantizer, full: _Rows) -> None:
        super().__init__(path, meta, None)  # type: ignore[arg-type]  # no Annoy handle: _faiss is ours
        self.meta: IvfMeta = meta
        self._faiss: _faiss.IndexIVFScalarQuantizer | None = handle
        self._full: _Rows | None = full
        self.nprobe = DEFAULT_NPROBE
        self.rerank = DEFAULT_RERANK

    @classmethod
    def open(cls, path: Path, *, encoder_key: str | None = None, dim: int | None = None) -> IvfIndex:
        """Read the index into memory and check it against the sidecar.

        Raises:
            StaleIndexError: The file is missing, truncated, corrupt, built for another encoder,
                or faiss is not installed (the caller rebuilds with what is available).
        """
        path = Path(path)
        meta = IvfMeta.read(sidecar_path(path))
        if encoder_key is not None and dim is not None:
            problems = meta.problems(encoder_key=encoder_key, dim=dim)
            if problems:
                raise StaleIndexError(f"index {path.name}: " + "; ".join(problems))
        for file, expected in ((path, meta.file_size), (vectors_path(path), meta.vectors_file_size)):
            try:
                size = file.stat().st_size
            except FileNotFoundError as exc:
                raise StaleIndexError(f"index file {file} is missing") from exc
            if size != expected:
                raise StaleIndexError(f"index file {file} has {size} bytes, the sidecar says {expected}")
        full = _Rows.open(vectors_path(path), (len(meta.item_ids), meta.dim))
        try:
            import faiss
        except ImportError as exc:
            raise StaleIndexError(f"index {path.name} needs faiss ({_MISSING})") from exc
        try:
            handle = faiss.read_index(str(path))  # the Python wrapper returns the concrete class
        except RuntimeError as exc:  # faiss reports a bad file as a RuntimeError
            raise StaleIndexError(f"index file {path} is corrupt: {str(exc).strip().splitlines()[-1][:200]}") from exc
        if not isinstance(handle, faiss.IndexIVFScalarQuantizer):
            raise StaleIndexError(f"index file {path} is a {type(handle).__name__}, not an IVF-SQ index")
        if handle.ntotal != len(meta.item_ids) or handle.d != meta.dim or handle.nlist != meta.nlist:
            raise StaleIndexError(f"index file {path} holds {handle.ntotal} items of {handle.d}-d in {handle.nlist} "
                                  f"lists; the sidecar says {len(meta.item_ids)}, {meta.dim}, {meta.nlist}")
        return cls(path, meta, handle, full)

    def close(self) -> None:
        """Free the index and close the vector file (queries after this raise :class:`LibraryError`)."""
        self._faiss = None
        full, self._full = self._full, None
        if full is not None:
            full.close()

    def search(self, query: np.ndarray, n: int, *, search_k: int = DEFAULT_SEARCH_K) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` nearest items among the members of the ``nprobe`` nearest lists.

        All members are scored on their int8 codes; the best ``max(n, rerank)`` are re-scored
        with the exact cosine of their float16 full vectors.

        Args:
            query: Shape (D,), L2-normalised.
            n: How many to return.
            search_k: Ignored (Annoy's knob; the inverted file's is ``nprobe``).

        Returns:
            ``(image_ids (m,) int64, cosine (m,) float32)``, ``m <= n``, most similar first (fewer
            when the probed lists hold fewer than ``n`` items); the cosine is the float16 vectors'
            (the int8 codes' beyond the re-ranked ones).
        """
        handle, full = self._faiss, self._full
        if handle is None or full is None:
            raise LibraryError("the index was closed")
        n = min(int(n), len(self._ids))
        if n <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, -1))
        wanted = min(len(self._ids), max(n, int(self.rerank)))
        params = _search_params(int(self.nprobe))
        sims, rows = handle.search(q, wanted, params=params)
        keep = rows[0] >= 0  # faiss pads with -1 when the probed lists hold fewer items
        rows_kept, sims_kept = rows[0][keep], sims[0][keep].astype(np.float32)
        if self.rerank > 0 and len(rows_kept):
            order = np.argsort(rows_kept)  # ascending rows: sequential page reads
            rows_kept = rows_kept[order]
            sims_kept = full.read(rows_kept) @ q[0]
        top = np.argsort(-sims_kept, kind="stable")[:n]
        return self._ids[rows_kept[top]], sims_kept[top].astype(np.float32)

    def vector(self, image_id: int) -> np.ndarray:
        """The stored full vector (float16 precision), shape (D,)."""
        if self._full is None:
            raise LibraryError("the index was closed")
        return self._full.read(np.array([self._position[int(image_id)]]))[0]


class _Rows:
    """Rows of a float16 ``.npy`` matrix read on demand (no memory map), thread-safe."""

    def __init__(self, fh: io.BufferedReader, offset: int, shape: tuple[int, int]) -> None:
        self._fh = fh
        self._offset = offset
        self._dim = shape[1]
        self._row_bytes = 2 * shape[1]
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, shape: tuple[int, int]) -> _Rows:
        """Open ``path`` and check its header; :class:`StaleIndexError` when it does not hold ``shape`` float16."""
        fh = open(path, "rb")  # noqa: SIM115 - kept open for the index's lifetime, closed by close()
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                found, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                found, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f".npy format {version}")
        except (OSError, ValueError) as exc:
            fh.close()
            raise StaleIndexError(f"index file {path} is corrupt: {exc}") from exc
        if tuple(found) != shape or fortran or np.dtype(dtype) != np.float16:
            fh.close()
            raise StaleIndexError(f"index file {path} holds {found} {dtype}, the sidecar {shape[0]} x {shape[1]} float16")
        return cls(fh, fh.tell(), shape)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted ascending reads fastest) as float32, shape (len(rows), D)."""
        out = np.empty((len(rows), self._dim), dtype=np.float16)
        with self._lock:
            for i, row in enumerate(rows.tolist()):
                self._fh.seek(self._offset + row * self._row_bytes)
                self._fh.readinto(memoryview(out[i]).cast("B"))
        return out.astype(np.float32)

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


def _search_params(nprobe: int) -> _faiss.SearchParametersIVF:
    """Per-call search parameters: concurrent queries with different ``nprobe`` do not race."""
    import faiss

    params = faiss.SearchParametersIVF()
    params.nprobe = nprobe
    return params


def build_ivf_index(
    path: Path,
    ids: Sequence[int] | np.ndarray,
    vectors: np.ndarray,
    *,
    encoder_key: str,
    labels_version: int,
    nlist: int | None = None,
    seed: int = 0,
    install: Callable[[Callable[[], None]], None] | None = None,
) -> Job[IvfMeta]:
    """Train the coarse centroids, fill the lists and write the index, as a job.

    The index is written to a temporary file in the index folder; ``install`` (as in
    :func:`~nmid_desktop.index.annoy_index.build_index`) gets the function that removes the old
    sidecar, renames the file into place and writes the new sidecar last.

    Args:
        path: Final ``.ann`` path (usually :func:`~nmid_desktop.index.annoy_index.index_path`).
        ids: Image ids, shape (N,).
        vectors: Embeddings, shape (N, D), L2-normalised.
        encoder_key: Recorded in the sidecar.
        labels_version: ``store.labels_version()`` read before the labels were collected.
        nlist: Coarse lists (default :func:`default_nlist`; capped at N).
        seed: k-means sample and initialisation.
        install: Swaps the file in under the searcher's lock; default: at once.

    Returns:
        The sidecar written; open the index with :meth:`IvfIndex.open`.

    Raises:
        LibraryError: faiss is not installed, or nothing to index.
    """
    ensure_worker_thread("index build")
    try:
        import faiss
    except ImportError as exc:
        raise LibraryError(_MISSING) from exc
    path = Path(path)
    vectors = np.asarray(vectors, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"vectors must be (N, D) with N = {len(ids)}, got {vectors.shape}")
    if len(ids) == 0:
        raise LibraryError("no labelled images with embeddings: nothing to index")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("image ids must be unique")
    n, dim = vectors.shape
    lists = max(1, min(int(nlist or default_nlist(n)), n))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmps = []
    for suffix in (".ivf.tmp", ".f16.npy.tmp"):
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=suffix)
        os.close(fd)
        tmps.append(Path(name))
    tmp, tmp_vec = tmps
    total = n + 2
    try:
        yield Progress(0, total, f"training {lists} coarse centroids")
        full = np.lib.format.open_memmap(tmp_vec, mode="w+", dtype=np.float16, shape=(n, dim))
        for start in range(0, n, _ADD_CHUNK):  # in chunks: no float16 copy of the whole set in memory
            full[start : start + _ADD_CHUNK] = vectors[start : start + _ADD_CHUNK]
        full.flush()
        del full
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, lists, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        index.cp.min_points_per_centroid = 1  # a small library trains on what it has, without warnings
        size = min(n, max(lists * TRAIN_PER_LIST, min(n, 10_000)), TRAIN_MAX)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        index.train(np.ascontiguousarray(vectors[rows]))
        yield Progress(1, total, "adding embeddings to the inverted lists")
        for start in range(0, n, _ADD_CHUNK):
            stop = min(n, start + _ADD_CHUNK)
            index.add_with_ids(np.ascontiguousarray(vectors[start:stop]), np.arange(start, stop, dtype=np.int64))
            yield Progress(1 + stop, total, "adding embeddings to the inverted lists")
        faiss.write_index(index, str(tmp))
        del index, quantizer
        meta = IvfMeta(
            encoder_key=encoder_key,
            dim=dim,
            n_trees=0,
            item_ids=tuple(int(i) for i in ids),
            labels_version=int(labels_version),
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            annoy_version=f"faiss {faiss.__version__}",
            file_size=tmp.stat().st_size,
            nlist=lists,
            vectors_file_size=tmp_vec.stat().st_size,
        )

        def move_into_place() -> None:
            side = sidecar_path(path)
            side.unlink(missing_ok=True)
            try:
                os.replace(tmp_vec, vectors_path(path))
                os.replace(tmp, path)
            except PermissionError as exc:  # Windows: another process still maps the old index
                raise LibraryError(f"cannot replace {path}: it is in use ({exc})") from exc
            atomic_write_text(side, meta.to_json())

        (install or (lambda move: move()))(move_into_place)
        yield Progress(total, total, f"indexed {n} images in {lists} inverted lists (int8 vectors)")
        return meta
    finally:
        for leftover in tmps:
            leftover.unlink(missing_ok=True)


__all__ = [
    "DEFAULT_NPROBE",
    "DEFAULT_RERANK",
    "KIND",
    "IvfIndex",
    "IvfMeta",
    "build_ivf_index",
    "default_nlist",
    "faiss_available",
    "is_ivf_sidecar",
]
