"""Nearest-neighbour search over the Annoy index plus the exact buffer, filtered to the live pool.

The Annoy index is a snapshot of the labelled library at its build; the library
moves on. The searcher reconciles the two at query time:

- images labelled since the build sit in the :class:`ExactBuffer`, searched exactly;
- images rejected or unlabelled since the build are still in the Annoy file but are
  filtered out (the *allowed* set is the current demonstration pool);
- relabelled images need nothing: labels are looked up in the store, never in the index.

Annoy and buffer results are merged by cosine. When the drift (buffered plus
filtered-out items) passes a threshold, :attr:`Searcher.needs_rebuild` says so and
the caller rebuilds in the background.

Which kind of index a library gets depends on its size (:func:`build_for_size`, measured
with benchmarks/million_index.py): plain Annoy on the full vectors below
:data:`LARGE_FROM` items; from there an inverted file with int8 full vectors
(:mod:`~nmid_desktop.index.ivf`, faiss) or, when faiss is not installed, Annoy on a PCA
with an exact re-rank (:mod:`~nmid_desktop.index.reduced`). :func:`open_index` opens
whichever kind the sidecar describes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path

import numpy as np

from nmid_desktop.core.jobs import Job, Progress, ensure_worker_thread
from nmid_desktop.index import ivf, reduced
from nmid_desktop.index.annoy_index import DEFAULT_SEARCH_K, AnnoyIndex, IndexMeta, build_index
from nmid_desktop.index.buffer import ExactBuffer

log = logging.getLogger(__name__)

# From this many items on, plain Annoy misses the targets (recall@10 >= 0.95, p95 < 10 ms,
# RAM < 2 GB at 1M; README "Large libraries"): at 200k simulated items it reaches recall 0.82
# in 1.2 GB, the inverted file 0.98 at a CPU p95 of 3 ms in 0.3 GB (0.96, 8 ms, 1.4 GB at 1M).
LARGE_FROM = reduced.REDUCED_FROM
NO_FAISS = ('faiss-cpu is not installed (pip install "nmid-desktop[large]"): building the PCA Annoy index '
            "instead, which is slower and finds fewer of the exact nearest images at this size")


def build_for_size(
    path: Path,
    ids: Sequence[int] | np.ndarray,
    vectors: np.ndarray,
    *,
    encoder_key: str,
    labels_version: int,
    install: Callable[[Callable[[], None]], None] | None = None,
    large_from: int = LARGE_FROM,
) -> Job[IndexMeta]:
    """Build the kind of index that suits ``len(ids)`` items, as a job (see the module docstring).

    Args:
        path: Final index path (usually :func:`~nmid_desktop.index.annoy_index.index_path`).
        ids: Image ids, shape (N,).
        vectors: Embeddings, shape (N, D), L2-normalised.
        encoder_key: Recorded in the sidecar.
        labels_version: ``store.labels_version()`` read before the labels were collected.
        install: As for :func:`~nmid_desktop.index.annoy_index.build_index`.
        large_from: Item count from which the large-library kind is built.

    Returns:
        The sidecar written; open the index with :func:`open_index`.
    """
    common = {"encoder_key": encoder_key, "labels_version": labels_version, "install": install}
    if len(ids) < large_from:
        return (yield from build_index(path, ids, vectors, **common))  # type: ignore[arg-type]
    if ivf.faiss_available():
        return (yield from ivf.build_ivf_index(path, ids, vectors, **common))  # type: ignore[arg-type]
    log.warning("%s", NO_FAISS)
    yield Progress(0, len(ids) + 2, NO_FAISS)
    return (yield from reduced.build_reduced_index(path, ids, vectors, **common))  # type: ignore[arg-type]


def open_index(path: Path, *, encoder_key: str | None = None, dim: int | None = None) -> AnnoyIndex:
    """Open whichever kind of index the sidecar at ``path`` describes.

    Raises:
        StaleIndexError: A file is missing, truncated or corrupt, the index was built for another
            encoder, or it is an inverted file and faiss is not installed: the caller rebuilds.
    """
    if ivf.is_ivf_sidecar(path):
        return ivf.IvfIndex.open(path, encoder_key=encoder_key, dim=dim)
    return reduced.open_index(path, encoder_key=encoder_key, dim=dim)

# A rebuild is due when the drift exceeds 5 % of the index or 500 items, whichever comes first:
# past that the buffer's brute-force scan and Annoy's over-fetching start to cost more than a
# background rebuild (seconds for 20,000 items).
REBUILD_FRACTION = 0.05
REBUILD_ITEMS = 500


class Searcher:
    """Searches an optional Annoy index and an exact buffer as one collection.

    Thread-safety: every public method takes an internal lock, so queries from worker threads
    may interleave with :meth:`add`, :meth:`set_allowed` and :meth:`swap_index` from another
    thread; an index swapped out is closed only once no query uses it.

    Args:
        index: The built index, or None before the first build.
        dim: Embedding size D (taken from the index when given).
        search_k: Annoy nodes inspected per query (see ``AnnoyIndex.search``).
        rebuild_fraction: Drift, as a fraction of the index size, that makes a rebuild due.
        rebuild_items: Drift, in items, that makes a rebuild due.
    """

    def __init__(
        self,
        index: AnnoyIndex | None,
        dim: int | None = None,
        *,
        search_k: int = DEFAULT_SEARCH_K,
        rebuild_fraction: float = REBUILD_FRACTION,
        rebuild_items: int = REBUILD_ITEMS,
    ) -> None:
        if index is None and dim is None:
            raise ValueError("give an index or the embedding size")
        self.dim = int(index.meta.dim if index is not None else dim)  # type: ignore[arg-type]
        self.search_k = int(search_k)
        self.rebuild_fraction = float(rebuild_fraction)
        self.rebuild_items = int(rebuild_items)
        self._lock = threading.RLock()
        self._index = index
        self.buffer = ExactBuffer(self.dim)
        self._allowed: frozenset[int] | None = None
        self._n_dead = 0  # indexed items outside the allowed set

    # -- state -------------------------------------------------------------------------
    @property
    def index(self) -> AnnoyIndex | None:
        """The current index of any kind (None before the first build)."""
        return self._index

    def set_allowed(self, ids: Iterable[int] | None) -> None:
        """Restrict results to these image ids (the current demonstration pool); None allows all."""
        with self._lock:
            self._allowed = None if ids is None else frozenset(int(i) for i in ids)
            self._count_dead()

    def _count_dead(self) -> None:
        if self._index is None or self._allowed is None:
            self._n_dead = 0
        else:
            ids = self._index.ids
            self._n_dead = int(len(ids) - np.count_nonzero(np.isin(ids, np.fromiter(self._allowed, np.int64))))

    def has(self, image_id: int) -> bool:
        """True when the image's vector is in the index or the buffer."""
        with self._lock:
            return image_id in self.buffer or (self._index is not None and image_id in self._index)

    def known(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Boolean mask over ``ids``: True where the vector is in the index or the buffer."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        with self._lock:
            mask = np.isin(ids, self.buffer.ids)
            if self._index is not None:
                mask |= np.isin(ids, self._index.ids)
        return mask

    def missing(self, ids: Iterable[int]) -> list[int]:
        """The ids whose vectors are in neither the index nor the buffer (to embed and :meth:`add`)."""
        with self._lock:
            return [int(i) for i in ids if not self.has(int(i))]

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Make images searchable at once (they go to the exact buffer unless already indexed).

        Shape of ``vectors``: (N, D), L2-normalised.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            return
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        with self._lock:
            if self._index is not None:
                fresh = np.fromiter((int(i) not in self._index for i in ids), dtype=bool, count=len(ids))
                ids, vectors = ids[fresh], vectors[fresh]
            if len(ids):
                self.buffer.add(ids, vectors)

    def swap_index(self, index: AnnoyIndex | None) -> AnnoyIndex | None:
        """Install a freshly built index; buffered items it now holds leave the buffer.

        Returns:
            The previous index, which the caller must close (after releasing any file it maps).
        """
        with self._lock:
            old, self._index = self._index, index
            if index is not None:
                self.buffer.remove(index.ids.tolist())
            self._count_dead()
            return old

    def replace_index(self, install: Callable[[], None], load: Callable[[], AnnoyIndex]) -> None:
        """Close the current index, run ``install`` (which replaces its file), open the new one.

        All of it happens under the lock, so queries wait a few milliseconds instead of seeing
        a missing index; closing first lets the file be replaced on Windows too. If ``install``
        or ``load`` fails, the previous file is reopened when possible and the error re-raised.
        """
        with self._lock:
            old = self._index
            self._index = None
            path = old.path if old is not None else None
            if old is not None:
                old.close()
            try:
                install()
                new = load()
            except BaseException:
                if path is not None:
                    try:
                        self._index = type(old).open(path)  # type: ignore[union-attr]
                    except Exception:  # noqa: BLE001 - the original error matters more
                        self._index = None
                self._count_dead()
                raise
            self.swap_index(new)

    def close(self) -> None:
        """Close the index (after any running query); the searcher keeps only its buffer."""
        with self._lock:
            if self._index is not None:
                self._index.close()
                self._index = None
            self._count_dead()

    # -- drift -------------------------------------------------------------------------
    @property
    def drift(self) -> int:
        """Items the index does not reflect: buffered ones plus indexed ones no longer allowed."""
        with self._lock:
            return len(self.buffer) + self._n_dead

    @property
    def needs_rebuild(self) -> bool:
        """True when the drift passed the threshold (or there is no index yet but items to index)."""
        with self._lock:
            drift = self.drift
            if drift == 0:
                return False
            size = len(self._index) if self._index is not None else 0
            return drift > self.rebuild_items or drift > self.rebuild_fraction * size

    # -- queries -----------------------------------------------------------------------
    def __len__(self) -> int:
        """Searchable items (allowed ones only when an allowed set is given)."""
        with self._lock:
            indexed = len(self._index) - self._n_dead if self._index is not None else 0
            if self._allowed is None:
                return indexed + len(self.buffer)
            return indexed + sum(1 for i in self.buffer.ids.tolist() if i in self._allowed)

    def search(self, query: np.ndarray, k: int, *, exclude: Collection[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` allowed items most similar to ``query`` (approximate for indexed ones).

        Args:
            query: Shape (D,), L2-normalised.
            k: How many to return.
            exclude: Image ids never to return (e.g. the query image itself).

        Returns:
            ``(image_ids (m,) int64, cosine (m,) float32)``, ``m <= k``, most similar first.
        """
        ensure_worker_thread("index search")
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise ValueError(f"query has {query.shape[0]} dimensions, the index {self.dim}")
        exclude = frozenset(int(i) for i in exclude)
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        with self._lock:
            allowed = self._allowed
            found: dict[int, float] = {}
            if self._index is not None and len(self._index):
                found.update(self._search_index(query, k, allowed, exclude))
            buf_ids, buf_sims = self.buffer.search(query, k + len(exclude), allowed=allowed)
        for image_id, sim in zip(buf_ids.tolist(), buf_sims.tolist(), strict=True):
            if image_id not in exclude:
                found[image_id] = sim  # the buffer is exact and newer: it wins a tie on the same id
        ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))[:k]
        return (
            np.fromiter((i for i, _ in ranked), np.int64, count=len(ranked)),
            np.fromiter((s for _, s in ranked), np.float32, count=len(ranked)),
        )

    def _search_index(
        self, query: np.ndarray, k: int, allowed: frozenset[int] | None, exclude: frozenset[int]
    ) -> dict[int, float]:
        index = self._index
        if index is None:
            return {}
        # Over-fetch for the items the filter will drop; widen until k survive or all were seen.
        n = k + len(exclude) + (min(self._n_dead, 4 * k) if self._n_dead else 0)
        while True:
            ids, sims = index.search(query, n, search_k=self.search_k)
            kept = {
                int(i): float(s)
                for i, s in zip(ids.tolist(), sims.tolist(), strict=True)
                if i not in exclude and (allowed is None or i in allowed)
            }
            if len(kept) >= k or n >= len(index):
                return kept
            n = min(len(index), 2 * n)

    def similarity(self, query: np.ndarray, ids: Sequence[int]) -> np.ndarray:
        """Exact cosine between ``query`` and the stored vectors of ``ids``; shape (len(ids),)."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        with self._lock:
            vectors = [self.vector(int(i)) for i in ids]
        if not vectors:
            return np.empty(0, np.float32)
        return (np.stack(vectors) @ query).astype(np.float32)

    def vector(self, image_id: int) -> np.ndarray:
        """The stored vector of one image, shape (D,); ``KeyError`` if neither index nor buffer has it."""
        with self._lock:
            if image_id in self.buffer:
                return self.buffer.vector(image_id)
            if self._index is not None and image_id in self._index:
                return self._index.vector(image_id)
        raise KeyError(image_id)
