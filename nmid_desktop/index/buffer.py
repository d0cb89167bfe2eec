"""An exact, growable NumPy buffer for embeddings that arrived after the Annoy build.

Annoy cannot take items once built, yet an image the expert has just accepted must
be a demonstration for the very next query. Such images live here, searched
exactly (one matrix-vector product) beside the Annoy index until the next rebuild.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet

import numpy as np


class ExactBuffer:
    """Image ids with L2-normalised vectors, searched by brute-force cosine.

    All methods are thread-safe: an internal lock guards the arrays, and :meth:`search`
    works on a consistent snapshot.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError("dim must be positive")
        self.dim = int(dim)
        self._lock = threading.Lock()
        self._ids = np.empty(0, np.int64)
        self._vectors = np.empty((0, self.dim), np.float32)
        self._row: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._row

    @property
    def ids(self) -> np.ndarray:
        """Buffered image ids, shape (N,) int64 (a copy)."""
        with self._lock:
            return self._ids.copy()

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace items.

        Args:
            ids: Image ids, shape (N,).
            vectors: Shape (N, D) float32, L2-normalised (normalised again here to be safe).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            return
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim}-d vectors, got {vectors.shape[1]}-d")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
        # The last occurrence of a repeated id wins, as if added one after the other.
        _, last = np.unique(ids[::-1], return_index=True)
        pick = np.sort(len(ids) - 1 - last)
        ids, vectors = ids[pick], vectors[pick]
        with self._lock:
            known = np.fromiter((int(i) in self._row for i in ids), dtype=bool, count=len(ids))
            # Arrays are replaced, never mutated in place, so a concurrent search keeps its snapshot.
            current = self._vectors.copy() if known.any() else self._vectors
            for image_id, vec in zip(ids[known].tolist(), vectors[known], strict=True):
                current[self._row[image_id]] = vec
            self._ids = np.concatenate([self._ids, ids[~known]])
            self._vectors = np.concatenate([current, vectors[~known]])
            self._row = {int(image_id): i for i, image_id in enumerate(self._ids.tolist())}

    def remove(self, ids: Iterable[int]) -> int:
        """Drop items (unknown ids are ignored); returns how many were removed."""
        wanted = {int(i) for i in ids}
        with self._lock:
            drop = wanted & self._row.keys()
            if not drop:
                return 0
            keep = np.array([int(i) not in drop for i in self._ids], dtype=bool)
            self._ids = self._ids[keep]
            self._vectors = self._vectors[keep]
            self._row = {int(image_id): i for i, image_id in enumerate(self._ids.tolist())}
        return len(drop)

    def clear(self) -> None:
        """Empty the buffer (after a rebuild took its items into the index)."""
        with self._lock:
            self._ids = np.empty(0, np.int64)
            self._vectors = np.empty((0, self.dim), np.float32)
            self._row = {}

    def vector(self, image_id: int) -> np.ndarray:
        """The buffered vector of one image, shape (D,); ``KeyError`` if absent."""
        with self._lock:
            return self._vectors[self._row[int(image_id)]].copy()

    def search(self, query: np.ndarray, n: int, *, allowed: AbstractSet[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most similar buffered items, exactly.

        Args:
            query: Shape (D,), L2-normalised.
            n: How many to return.
            allowed: If given, only these image ids may be returned.

        Returns:
            ``(image_ids (m,) int64, cosine (m,) float32)`` with ``m <= n``, most similar first.
        """
        with self._lock:
            ids, vectors = self._ids, self._vectors
        if len(ids) == 0 or n <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        sims = vectors @ np.asarray(query, dtype=np.float32)  # (N,)
        if allowed is not None:
            mask = np.fromiter((int(i) in allowed for i in ids), dtype=bool, count=len(ids))
            ids, sims = ids[mask], sims[mask]
        n = min(int(n), len(ids))
        if n == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        top = np.argpartition(-sims, n - 1)[:n] if n < len(ids) else np.arange(len(ids))
        order = top[np.lexsort((ids[top], -sims[top]))]  # ties broken by id: deterministic
        return ids[order], sims[order].astype(np.float32)
