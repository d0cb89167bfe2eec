"""An Annoy index of labelled embeddings, on disk and memory-mapped, with a JSON sidecar.

Annoy (Spotify, https://github.com/spotify/annoy) builds a forest of random
projection trees; ``load`` memory-maps the file, so opening a 100 MB index costs
nothing and several processes share the pages. Its ``angular`` metric is the
Euclidean distance of the normalised vectors, ``d = sqrt(2 - 2 cos)``, so the
cosine similarity is ``1 - d**2 / 2`` (:func:`cosine_from_angular`; gensim once
got this conversion wrong, gensim issue 3440).

Annoy item ``i`` is the library image ``item_ids[i]``; the sidecar
``<name>.json`` beside ``<name>.ann`` records that mapping with everything needed
to tell whether the file still fits the library (:meth:`IndexMeta.problems`).
A build writes to a temporary file and renames it into place, so the final name
never holds a half-written index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    from annoy import AnnoyIndex as _Annoy

from nmid_desktop.core.errors import LibraryError, NmidError
from nmid_desktop.core.fileio import atomic_write_text
from nmid_desktop.core.jobs import Job, Progress, ensure_worker_thread

SIDECAR_FORMAT = 1
METRIC: Final = "angular"
# Chosen with benchmarks/index_check.py (20,000 clustered items, 1280-d and 128-d, held-out
# queries): 50 trees and 2,000 inspected nodes give recall@10 of about 0.99 at a median query
# of 1.4 ms (1280-d) and 0.5 ms (128-d) on a 2-core CPU; 5,000 nodes buy little recall for twice
# the time. More trees cost build time and disk (114 MB for 20,000 x 1280-d at 50 trees).
DEFAULT_N_TREES = 50
DEFAULT_SEARCH_K = 2000
_ADD_CHUNK = 256  # items added between two progress reports (cancel points)


class StaleIndexError(NmidError):
    """The index on disk cannot serve this library (missing, corrupt, other encoder): rebuild it."""


def cosine_from_angular(distance: np.ndarray | float) -> np.ndarray | float:
    """Cosine similarity from Annoy's angular distance ``d = sqrt(2 - 2 cos)``.

    Args:
        distance: One distance or an array of them.

    Returns:
        ``1 - d**2 / 2``, in [-1, 1].
    """
    return 1.0 - np.square(distance) / 2.0


def annoy_version() -> str:
    """The installed annoy distribution's version (recorded in the sidecar)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("annoy")
    except PackageNotFoundError:  # pragma: no cover - annoy imported from a source tree
        return "unknown"


def safe_name(encoder_key: str) -> str:
    """A filesystem-safe file stem for an encoder key (readable prefix plus a short hash).

    Encoder keys contain characters such as ``:`` or ``/`` that Windows refuses in file names;
    the hash keeps two keys that sanitise alike apart.
    """
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder_key).strip("._")[:60] or "index"
    digest = hashlib.sha256(encoder_key.encode("utf-8")).hexdigest()[:12]
    return f"{readable}-{digest}"


def index_path(library_root: Path, encoder_key: str, *, index_dir: Path | None = None) -> Path:
    """Where the library's index for one encoder lives: ``<library>/index/<safe key>.ann``.

    ``index_dir`` (a store's ``index_dir``) replaces ``<library>/index``: a shared
    library keeps its indexes in each PC's cache, not in the shared folder.
    """
    folder = Path(index_dir) if index_dir is not None else Path(library_root) / "index"
    return folder / f"{safe_name(encoder_key)}.ann"


def sidecar_path(ann_path: Path) -> Path:
    """The JSON sidecar beside an ``.ann`` file."""
    return Path(ann_path).with_suffix(".json")


@dataclass(frozen=True)
class IndexMeta:
    """What the sidecar records about one built index.

    Attributes:
        encoder_key: The encoder (name + weights sha256) whose embeddings were indexed.
        dim: Embedding size D.
        n_trees: Annoy trees.
        item_ids: ``item_ids[i]`` is the library image id of Annoy item ``i``.
        labels_version: ``store.labels_version()`` when the build started.
        built_at: ISO 8601 UTC time of the build.
        annoy_version: The annoy version that wrote the file.
        file_size: Size in bytes of the ``.ann`` file (detects truncation before mmap).
        metric: Always ``angular``.
        format: Sidecar format version.
    """

    encoder_key: str
    dim: int
    n_trees: int
    item_ids: tuple[int, ...]
    labels_version: int
    built_at: str
    annoy_version: str
    file_size: int
    metric: str = METRIC
    format: int = SIDECAR_FORMAT

    def to_json(self) -> str:
        """The sidecar text."""
        data = dataclasses.asdict(self)
        data["item_ids"] = list(self.item_ids)
        return json.dumps(data, indent=1)

    @classmethod
    def read(cls, path: Path) -> IndexMeta:
        """Read a sidecar; raises :class:`StaleIndexError` when it is missing or malformed."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            data["item_ids"] = tuple(int(i) for i in data["item_ids"])
            meta = cls(**data)
        except FileNotFoundError as exc:
            raise StaleIndexError(f"index sidecar {path} is missing") from exc
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise StaleIndexError(f"index sidecar {path} is unreadable: {exc}") from exc
        if meta.format != SIDECAR_FORMAT or meta.metric != METRIC:
            raise StaleIndexError(f"index sidecar {path} has format {meta.format}/{meta.metric}")
        return meta

    def problems(self, *, encoder_key: str, dim: int) -> list[str]:
        """Reasons this index cannot serve an encoder; empty when it can.

        Label drift (images labelled, relabelled or rejected since the build) is not a problem
        here: the searcher filters and buffers it (see ``Searcher.drift``).
        """
        out = []
        if self.encoder_key != encoder_key:
            out.append(f"built for encoder {self.encoder_key!r}, the library uses {encoder_key!r}")
        if self.dim != dim:
            out.append(f"built for {self.dim}-d embeddings, the encoder gives {dim}-d")
        return out


class AnnoyIndex:
    """A read-only, memory-mapped Annoy index whose items are library image ids.

    Queries are thread-safe (Annoy's search only reads the mapped file). Build one with
    :func:`build_index` and open it with :meth:`open`.
    """

    def __init__(self, path: Path, meta: IndexMeta, annoy_index: _Annoy) -> None:
        self.path = Path(path)
        self.meta = meta
        self._annoy: _Annoy | None = annoy_index
        self._ids = np.asarray(meta.item_ids, dtype=np.int64)
        self._position = {int(image_id): i for i, image_id in enumerate(meta.item_ids)}

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, *, encoder_key: str | None = None, dim: int | None = None) -> AnnoyIndex:
        """Memory-map an index and check it against its sidecar (and the encoder, when given).

        Raises:
            StaleIndexError: The file or sidecar is missing, corrupt, or built for another encoder.
        """
        from annoy import AnnoyIndex as _Annoy

        path = Path(path)
        meta = IndexMeta.read(sidecar_path(path))
        if encoder_key is not None and dim is not None:
            problems = meta.problems(encoder_key=encoder_key, dim=dim)
            if problems:
                raise StaleIndexError(f"index {path.name}: " + "; ".join(problems))
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise StaleIndexError(f"index file {path} is missing") from exc
        if size != meta.file_size:
            # Checked before mmap: Annoy trusts a file whose size is a multiple of its node size.
            raise StaleIndexError(f"index file {path} has {size} bytes, the sidecar says {meta.file_size}")
        handle = _Annoy(meta.dim, METRIC)
        try:
            handle.load(str(path), prefault=False)
        except OSError as exc:
            raise StaleIndexError(f"index file {path} is corrupt: {exc}") from exc
        n_items = handle.get_n_items()
        if n_items != len(meta.item_ids):
            handle.unload()
            raise StaleIndexError(f"index file {path} holds {n_items} items, the sidecar lists {len(meta.item_ids)}")
        return cls(path, meta, handle)

    def close(self) -> None:
        """Unmap the file (needed on Windows before the file can be replaced)."""
        if self._annoy is not None:
            self._annoy.unload()
            self._annoy = None

    # -- queries -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._position

    @property
    def ids(self) -> np.ndarray:
        """Indexed image ids, shape (N,) int64, in Annoy item order."""
        return self._ids

    def search(self, query: np.ndarray, n: int, *, search_k: int = DEFAULT_SEARCH_K) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` approximate nearest items to ``query``.

        Args:
            query: Shape (D,), L2-normalised.
            n: How many items to return (at most ``len(self)``).
            search_k: Tree nodes to inspect; more is slower and more exact. It is raised to at
                least ``n * n_trees`` (Annoy's own default).

        Returns:
            ``(image_ids (n,) int64, cosine (n,) float32)``, most similar first.
        """
        if self._annoy is None:
            raise LibraryError("the index was closed")
        n = min(int(n), len(self._ids))
        if n <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        search_k = max(int(search_k), n * self.meta.n_trees)
        items, distances = self._annoy.get_nns_by_vector(
            np.asarray(query, dtype=np.float32).tolist(), n, search_k=search_k, include_distances=True
        )
        ids = self._ids[np.asarray(items, dtype=np.int64)]
        return ids, np.asarray(cosine_from_angular(np.asarray(distances, dtype=np.float32)), dtype=np.float32)

    def vector(self, image_id: int) -> np.ndarray:
        """The stored (normalised) vector of an indexed image, shape (D,)."""
        if self._annoy is None:
            raise LibraryError("the index was closed")
        return np.asarray(self._annoy.get_item_vector(self._position[int(image_id)]), dtype=np.float32)


def build_index(
    path: Path,
    ids: Sequence[int] | np.ndarray,
    vectors: np.ndarray,
    *,
    encoder_key: str,
    labels_version: int,
    n_trees: int = DEFAULT_N_TREES,
    seed: int = 0,
    install: Callable[[Callable[[], None]], None] | None = None,
) -> Job[IndexMeta]:
    """Build an index into ``path`` (and its sidecar) as a job.

    Items are added in chunks with a progress report (a cancel point) after each; the tree
    build itself is one call into Annoy. The index is written to a temporary file in the same
    folder and renamed into place only when complete, so a cancelled or failed build leaves the
    previous index (or nothing) under ``path``, never a broken one. The old sidecar is removed
    before the rename and the new one written after it, so a crash in between leaves an index
    without a sidecar, which :meth:`AnnoyIndex.open` reports as stale.

    Args:
        path: Final ``.ann`` path (usually :func:`index_path`).
        ids: Image ids, shape (N,).
        vectors: Embeddings, shape (N, D), L2-normalised.
        encoder_key: Recorded in the sidecar.
        labels_version: ``store.labels_version()`` read before the labels were collected.
        n_trees: Annoy trees (more: better recall, bigger file, slower build).
        seed: Annoy's random seed, for reproducible trees.
        install: Called with a function that moves the finished file into place; a searcher
            passes one that closes the old index first and opens the new one after, all under
            its lock (Windows cannot replace a mapped file). Default: move it at once.

    Returns:
        The sidecar written beside the index. Open it with :meth:`AnnoyIndex.open`; callers that
        still have the old index mapped must close it first on Windows.
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
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = _Annoy(dim, METRIC)
    handle.set_seed(int(seed))
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".ann.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield Progress(0, n + 1, "adding embeddings to the index")
        for start in range(0, n, _ADD_CHUNK):
            for i in range(start, min(n, start + _ADD_CHUNK)):
                handle.add_item(i, vectors[i])
            yield Progress(min(n, start + _ADD_CHUNK), n + 1, "adding embeddings to the index")
        handle.build(int(n_trees), n_jobs=1)
        yield Progress(n, n + 1, f"built {n_trees} trees")
        if not handle.save(str(tmp)):
            raise LibraryError(f"could not write {tmp}")
        handle.unload()  # release the mapping of tmp so the rename also works on Windows
        meta = IndexMeta(
            encoder_key=encoder_key,
            dim=dim,
            n_trees=int(n_trees),
            item_ids=tuple(int(i) for i in ids),
            labels_version=int(labels_version),
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            annoy_version=annoy_version(),
            file_size=tmp.stat().st_size,
        )

        def move_into_place() -> None:
            side = sidecar_path(path)
            side.unlink(missing_ok=True)
            try:
                os.replace(tmp, path)
            except PermissionError as exc:  # Windows: another process still maps the old index
                raise LibraryError(f"cannot replace {path}: it is in use ({exc})") from exc
            atomic_write_text(side, meta.to_json())

        (install or (lambda move: move()))(move_into_place)
        yield Progress(n + 1, n + 1, f"indexed {n} images")
        return meta
    finally:
        handle.unload()
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class IndexCheck:
    """Annoy against exact search: recall and query latency.

    Attributes:
        k: Neighbours compared.
        n_queries: Queries measured.
        recall: Mean fraction of the exact top-k that Annoy returned (recall@k).
        latency_ms: Percentile -> wall-clock milliseconds of one Annoy query (50, 95, 99).
        cpu_ms: The same in CPU time of the querying thread: what the query costs, without
            the time it waited for a core on a busy machine.
        exact_latency_ms: Wall-clock percentiles of brute-force NumPy search, for comparison.
        search_k: Nodes inspected per Annoy query.
    """

    k: int
    n_queries: int
    recall: float
    latency_ms: dict[int, float]
    cpu_ms: dict[int, float]
    exact_latency_ms: dict[int, float]
    search_k: int

    def summary(self) -> str:
        """Three lines for ``nmid index --check`` and the benchmark."""

        def fmt(values: dict[int, float]) -> str:
            return ", ".join(f"p{p} {v:.2f} ms" for p, v in values.items())

        return (
            f"recall@{self.k}: {self.recall:.4f} over {self.n_queries} queries (search_k {self.search_k})\n"
            f"query latency (embedding excluded): wall {fmt(self.latency_ms)}; CPU {fmt(self.cpu_ms)}\n"
            f"exact NumPy search, wall: {fmt(self.exact_latency_ms)}"
        )


def check_index(
    index: AnnoyIndex,
    vectors: np.ndarray,
    *,
    queries: np.ndarray | None = None,
    k: int = 10,
    n_queries: int = 200,
    search_k: int = DEFAULT_SEARCH_K,
    seed: int = 0,
) -> IndexCheck:
    """Measure an index's recall@k against exact cosine search, and its query latency.

    Args:
        index: The index.
        vectors: The indexed vectors in Annoy item order, shape (N, D) (``index.ids`` order).
        queries: Query vectors, shape (Q, D). Default: ``n_queries`` indexed items, each
            excluded from its own results (leave-one-out).
        k: Neighbours compared.
        n_queries: Queries drawn when ``queries`` is None.
        search_k: Nodes inspected per Annoy query.
        seed: Which items are drawn.
    """
    import time

    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) != len(index):
        raise ValueError(f"{len(vectors)} vectors for an index of {len(index)} items")
    self_ids: list[int | None]
    if queries is None:
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)
        queries = vectors[rows]
        self_ids = [int(index.ids[r]) for r in rows]
    else:
        queries = np.asarray(queries, dtype=np.float32)
        self_ids = [None] * len(queries)
    if len(queries) == 0:
        raise ValueError("no queries to check with")
    k = min(k, len(index) - (1 if self_ids[0] is not None else 0))
    if k < 1:
        raise LibraryError("the index holds too few images to check against exact search")
    hits, annoy_times, cpu_times, exact_times = 0.0, [], [], []
    for query, own in zip(queries, self_ids, strict=True):
        extra = 1 if own is not None else 0
        t0 = time.perf_counter()
        sims = vectors @ query
        top = np.argpartition(-sims, k + extra - 1)[: k + extra]
        exact_times.append(time.perf_counter() - t0)
        ordered = (int(index.ids[i]) for i in top[np.argsort(-sims[top])])
        exact = set([i for i in ordered if i != own][:k])
        t0, c0 = time.perf_counter(), time.thread_time()
        found, _ = index.search(query, k + extra, search_k=search_k)
        annoy_times.append(time.perf_counter() - t0)
        cpu_times.append(time.thread_time() - c0)
        got = [int(i) for i in found if int(i) != own][:k]
        hits += len(exact & set(got)) / k
    pct = (50, 95, 99)
    return IndexCheck(
        k=k,
        n_queries=len(queries),
        recall=hits / len(queries),
        latency_ms={p: float(np.percentile(annoy_times, p) * 1e3) for p in pct},
        cpu_ms={p: float(np.percentile(cpu_times, p) * 1e3) for p in pct},
        exact_latency_ms={p: float(np.percentile(exact_times, p) * 1e3) for p in pct},
        search_k=search_k,
    )
