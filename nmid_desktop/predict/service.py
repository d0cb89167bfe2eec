"""The classifier service: the one object the ``nmid`` command and the window use for local work.

It ties together the library's encoder, the embedding cache, the Annoy index with its
exact buffer, demonstration retrieval and the two local predictors.

Thread-safety (the window runs queries in worker threads while the user labels):

- Every public method may be called from any thread. The store gives each thread its own
  SQLite connection; the classifier's own state (pool, searcher, probe, file cache) is
  guarded by a lock, and long work (embedding, fitting, building) runs outside it.
- :meth:`prepare` and :meth:`rebuild_index` are jobs: drive each from one worker at a time.
  While a rebuild runs, queries keep using the previous index plus the buffer; the swap to
  the new index blocks queries for milliseconds only.
- A query issued before :meth:`prepare` finished waits for it (or runs it).
- :meth:`notify_labelled` makes freshly labelled images demonstrations for the next query;
  labels changed by anyone else (another thread, ``nmid label`` in a shell) are picked up
  at the next query too, because every query compares ``store.labels_version()``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nmid_desktop.core.config import Settings, load_settings
from nmid_desktop.core.errors import ConfigError, ImageError, LabelError, LibraryError
from nmid_desktop.core.jobs import Job, Progress, run_job
from nmid_desktop.core.store.base import ImageRecord, Store
from nmid_desktop.index.annoy_index import AnnoyIndex, StaleIndexError, index_path
from nmid_desktop.index.searcher import LARGE_FROM, Searcher, build_for_size, open_index
from nmid_desktop.inference.protocol import ImageEncoder
from nmid_desktop.predict.knn import KnnPredictor
from nmid_desktop.predict.probe import ProbePredictor
from nmid_desktop.predict.ranking import Ranking
from nmid_desktop.predict.retrieval import STRATEGIES, Demonstration, DemoPool, similar
from nmid_desktop.predict.trust import Assessment, TrustModel

log = logging.getLogger(__name__)

LOCAL_PREDICTORS = ("knn", "logreg")
INLINE_TRUST_FIT = 5000  # labelled images up to which a first trust fit (about a second) runs in the query
_FILE_CACHE_SIZE = 256
class Classifier:
    """Local retrieval and prediction over one library.

    Args:
        store: The open library.
        settings: User settings (k, strategy, local predictor, data bar crop); loaded if None.
        encoder: An ``Encoder`` or an encoder name (``NAME+VIEWS`` for view averaging, see
            :func:`nmid_desktop.inference.loader.load_encoder`); default: the library's (store meta
            ``encoder``), else the settings', else ``DEFAULT_ENCODER``.
        include_pending: Also use labels nobody has reviewed (e.g. set from a prediction) as
            demonstrations and probe training data.
    """

    def __init__(
        self, store: Store, settings: Settings | None = None, *, encoder: ImageEncoder | None = None, include_pending: bool = True
    ) -> None:
        self.store = store
        self.settings = settings or load_settings()
        self.include_pending = include_pending
        self._encoder = encoder if encoder is not None and not isinstance(encoder, str) else None
        self._encoder_name: str | None = encoder if isinstance(encoder, str) else None
        self._lock = threading.RLock()  # state: pool, searcher, ready flag, file cache
        self._prepare_lock = threading.RLock()  # one prepare/rebuild at a time
        self._encoder_lock = threading.Lock()
        self._searcher: Searcher | None = None
        self._pool: DemoPool | None = None
        self._knn = KnnPredictor()
        self._probe = ProbePredictor()
        self._files: OrderedDict[tuple[str, int, int, str], np.ndarray] = OrderedDict()
        self._failed: set[int] = set()  # labelled images whose files could not be embedded
        self._trust: tuple[tuple[Any, ...], TrustModel] | None = None
        self._trust_thread: threading.Thread | None = None
        self._pinned = threading.local()  # version: the labels version of this thread's query (labels_at)

    # -- encoder and embeddings -----------------------------------------------------------
    @property
    def encoder(self) -> ImageEncoder:
        """The library's encoder, loaded on first use."""
        with self._encoder_lock:
            if self._encoder is None:
                from nmid_desktop.inference.loader import load_encoder, resolve_encoder_name

                name = self._encoder_name or resolve_encoder_name(self.store, self.settings)
                self._encoder = load_encoder(name, library=self.store.root, engine=self.settings.engine)
            return self._encoder

    @property
    def loaded_encoder_key(self) -> str | None:
        """The encoder's key when it is loaded already (None: it is not; nothing is loaded)."""
        encoder = self._encoder
        return None if encoder is None else encoder.key

    @contextlib.contextmanager
    def labels_at(self, version: int) -> Iterator[None]:
        """Within the block, this thread takes ``version`` as the library's labels version.

        One query reads the version once, with its image (``Store.query_start``), instead of
        once for the search, once for the vote and once for the trust check: on a shared
        library each read is a round trip. The pool is still re-read when it is older.
        """
        before = getattr(self._pinned, "version", None)
        self._pinned.version = int(version)
        try:
            yield
        finally:
            self._pinned.version = before

    def _embed_ids(self, image_ids: Sequence[int]) -> Job[tuple[np.ndarray, np.ndarray]]:
        """Embeddings of library images, from the cache or computed (and cached)."""
        from nmid_desktop.ml.embed import embed_images

        if not image_ids:
            return np.empty(0, np.int64), np.empty((0, self.encoder.dim), np.float32)
        ids, vectors = yield from embed_images(self.store, self.encoder, list(image_ids))
        return np.asarray(ids, dtype=np.int64), np.asarray(vectors, dtype=np.float32)

    def embed_image(self, image_id: int) -> np.ndarray:
        """The embedding of one library image (cached in the library). Shape (D,).

        Raises:
            LibraryError: The image could not be embedded (e.g. its file is gone).
        """
        ids, vectors = run_job(self._embed_ids([int(image_id)]))
        if len(ids) == 0:
            raise LibraryError(f"image {image_id} could not be embedded")
        return vectors[0]

    def embed_decoded(self, image_id: int, model_view: np.ndarray) -> np.ndarray:
        """The embedding of a library image whose pixels the caller has already decoded. Shape (D,).

        The cached embedding when there is one; otherwise ``model_view`` (the 2-D uint8 micrograph
        proper, as :func:`~nmid_desktop.core.images.model_input` gives it) is embedded and cached,
        so the window's query decodes its file once, for display and encoder alike.
        """
        ids, vectors = self.store.get_embeddings(self.encoder.key, [int(image_id)])
        if len(ids):
            return np.asarray(vectors[0], dtype=np.float32)
        vector = np.asarray(self.encoder.embed([model_view])[0], dtype=np.float32)
        self.store.put_embeddings(self.encoder.key, [int(image_id)], vector[None, :])
        return vector

    def library_image(self, path: Path, page: int = 0) -> ImageRecord | None:
        """The library image with the same content as a file, if any (by sha256)."""
        from nmid_desktop.core.fileio import sha256_file

        # sha256_file refuses a FIFO or a link to /dev/zero instead of reading it forever.
        return self.store.find_image(sha256_file(path), page)

    def embed_file(self, path: Path) -> np.ndarray:
        """The embedding of an image file (first page, data bar cropped as set). Shape (D,).

        Files already in the library reuse its cached embedding; others are embedded and kept
        in a small in-memory cache keyed by path, size and modification time.
        """
        from nmid_desktop.ml.embed import embed_paths

        path = Path(path)
        try:
            stat = path.stat()
        except OSError as exc:
            raise LibraryError(f"{path}: {exc.strerror or exc}") from exc
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, self.encoder.key)
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
        record = self.library_image(path)
        vector = None
        if record is not None:
            ids, vectors = self.store.get_embeddings(self.encoder.key, [record.id])
            vector = vectors[0] if len(ids) else None
        if vector is None:
            reports: list[Progress] = []
            rows = run_job(embed_paths(self.encoder, [path], crop=self.settings.crop_data_bar), reports.append)
            if np.isnan(rows[0, 0]):  # embed_paths marks an unreadable file with a NaN row
                failed = (reports[-1].data or {}).get("all_failed") if reports else None
                raise ImageError(path, failed[0][1] if failed else "could not be embedded")
            vector = rows[0]
        vector = np.asarray(vector, dtype=np.float32)
        with self._lock:
            self._files[key] = vector
            while len(self._files) > _FILE_CACHE_SIZE:
                self._files.popitem(last=False)
        return vector

    # -- index lifecycle ---------------------------------------------------------------
    @property
    def index_file(self) -> Path:
        """Where this library's index for the current encoder lives."""
        return index_path(self.store.root, self.encoder.key, index_dir=self.store.index_dir)

    @property
    def ready(self) -> bool:
        """True once :meth:`prepare` has run."""
        return self._searcher is not None

    def prepare(self, *, rebuild: bool = False) -> Job[None]:
        """Embed labelled images that lack embeddings and open (or build) the index.

        An index whose sidecar does not fit the library (another encoder, another dimension,
        a missing or corrupt file) or that drifted past the rebuild threshold is rebuilt.

        Args:
            rebuild: Rebuild the index even when the one on disk is usable.

        Yields:
            Progress of embedding and building (cancel points; a cancelled build keeps the old
            index file).
        """
        with self._prepare_lock:
            encoder = self.encoder
            pool = DemoPool.from_store(self.store, include_pending=self.include_pending)
            index: AnnoyIndex | None = None
            try:
                if not rebuild:
                    index = open_index(self.index_file, encoder_key=encoder.key, dim=encoder.dim)
            except StaleIndexError as exc:
                if len(pool):
                    log.info("index will be rebuilt: %s", exc)
            searcher = Searcher(index, encoder.dim)
            searcher.set_allowed(pool.labels)
            missing = self._missing(searcher, pool)
            if index is None or searcher.drift + len(missing) > _rebuild_limit(searcher, len(index or ())):
                if index is not None:
                    index.close()
                # Build into the searcher in use, if any: its swap closes the old file under its
                # lock before the new one replaces it (Windows cannot replace a mapped file).
                with self._lock:
                    searcher = self._searcher or Searcher(None, encoder.dim)
                searcher.set_allowed(pool.labels)
                if len(pool):
                    yield from self._build(searcher, pool)
            else:
                yield Progress(0, len(missing), "embedding images labelled since the index was built")
                ids, vectors = yield from self._embed_ids(missing)
                searcher.add(ids, vectors)
                self._note_failures(missing, ids)
            with self._lock:
                old, self._searcher, self._pool = self._searcher, searcher, pool
            if old is not None and old is not searcher:
                old.close()  # waits for queries still running on it

    def _build(self, searcher: Searcher, pool: DemoPool) -> Job[None]:
        """Embed the pool and build its index into the library; install it into ``searcher``."""
        ids, vectors = yield from self._embed_ids(sorted(pool.labels))
        self._note_failures(sorted(pool.labels), ids)
        if len(ids) == 0:
            return
        encoder = self.encoder
        path = self.index_file

        def install(move: Any) -> None:
            searcher.replace_index(move, lambda: open_index(path, encoder_key=encoder.key, dim=encoder.dim))

        # Past LARGE_FROM items Annoy at full width misses the recall and memory targets
        # (benchmarks/million_index.py): the inverted file (or, without faiss, the PCA forest) takes over.
        yield from build_for_size(path, ids, vectors, encoder_key=encoder.key, labels_version=pool.version or 0,
                                  install=install, large_from=LARGE_FROM)

    def rebuild_index(self) -> Job[None]:
        """Rebuild the index from the current labels (run it in the background).

        Queries keep working during the build; images labelled meanwhile stay in the buffer.
        """
        if not self.ready:
            yield from self.prepare(rebuild=True)
            return
        with self._prepare_lock:
            pool = DemoPool.from_store(self.store, include_pending=self.include_pending)
            searcher = self._searcher
            if searcher is None or not len(pool):
                return
            yield from self._build(searcher, pool)
            self._refresh(force=True)

    @property
    def searcher(self) -> Searcher | None:
        """The live searcher (index plus buffer), None before :meth:`prepare`."""
        return self._searcher

    @property
    def needs_rebuild(self) -> bool:
        """True when enough labels changed since the build that a background rebuild is due."""
        searcher = self._searcher
        return searcher is not None and searcher.needs_rebuild

    def notify_labelled(self, image_ids: Iterable[int]) -> None:
        """Make just-labelled (or just-accepted) images demonstrations for the very next query.

        Their embeddings (cached, or computed now) go to the exact buffer at once. Rejected or
        relabelled images need no call: labels are re-read whenever the labels version moves.
        """
        self._ensure_ready()
        with self._lock:
            self._failed.difference_update(int(i) for i in image_ids)  # give them another chance
        self._refresh(force=True)

    def _missing(self, searcher: Searcher, pool: DemoPool) -> list[int]:
        """Pool images whose vectors the searcher lacks (and that did not already fail to embed)."""
        ids = pool.ids
        missing = ids[~searcher.known(ids)].tolist()
        with self._lock:
            return [i for i in missing if i not in self._failed]

    def _note_failures(self, wanted: Sequence[int], got: np.ndarray) -> None:
        failed = set(wanted) - set(np.asarray(got).tolist())
        if failed:
            log.warning("%d labelled images could not be embedded (first: id %d)", len(failed), min(failed))
            with self._lock:
                self._failed.update(failed)

    # -- queries -----------------------------------------------------------------------
    def _ensure_ready(self) -> None:
        if self._searcher is None:
            with self._prepare_lock:
                if self._searcher is None:
                    run_job(self.prepare())

    def _refresh(self, *, force: bool = False) -> tuple[Searcher, DemoPool]:
        """Re-read the labels when their version moved and buffer newly labelled images."""
        with self._lock:
            searcher, pool = self._searcher, self._pool
        if searcher is None or pool is None:
            raise LibraryError("the classifier is not prepared")
        pinned: int | None = getattr(self._pinned, "version", None)
        if pinned is not None:
            # The query's version: re-read only a pool older than it (versions only grow).
            stale = pool.version is None or pool.version < pinned
        else:
            stale = pool.version != self.store.labels_version()
        if force or stale:
            pool = DemoPool.from_store(self.store, include_pending=self.include_pending)
            searcher.set_allowed(pool.labels)
            missing = self._missing(searcher, pool)
            if missing:
                ids, vectors = run_job(self._embed_ids(missing))  # outside the lock: embedding is slow
                searcher.add(ids, vectors)
                self._note_failures(missing, ids)
            with self._lock:
                if self._searcher is searcher:
                    self._pool = pool
        return searcher, pool

    def similar(
        self,
        vector: np.ndarray,
        k: int | None = None,
        strategy: str | None = None,
        exclude_ids: Iterable[int] = (),
        *,
        rng: np.random.Generator | int | None = None,
        details: bool = True,
    ) -> list[Demonstration]:
        """The demonstrations for a query embedding.

        Args:
            vector: Shape (D,), from :meth:`embed_file` or :meth:`embed_image`.
            k: How many (default: settings' k).
            strategy: ``similarity`` or ``random`` (default: settings' strategy).
            exclude_ids: Never return these (the query image itself when it is in the library).
            rng: Seed or generator for ``random``.
            details: Read the demonstrations' records (False: the caller reads them).
        """
        k = int(k or self.settings.k)
        strategy = strategy or self.settings.strategy
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        self._ensure_ready()
        searcher, pool = self._refresh()
        return similar(vector, k, strategy, searcher=searcher, pool=pool, exclude_ids=exclude_ids, rng=rng,
                       details=details)

    def predict_local(
        self,
        vector: np.ndarray,
        predictor: str | None = None,
        k: int | None = None,
        exclude_ids: Iterable[int] = (),
        *,
        demonstrations: Sequence[Demonstration] | None = None,
    ) -> Ranking:
        """A full ranking of the library's classes for a query embedding.

        Args:
            vector: Shape (D,).
            predictor: ``knn`` (vote of the K most similar demonstrations) or ``logreg`` (probe on
                every labelled embedding, refitted when the labels version moves); default: settings.
            k: Demonstrations for ``knn`` (default: settings' k).
            exclude_ids: Images the kNN vote must not use (the query itself when in the library).
                The probe is trained on the whole pool and ignores this.
            demonstrations: The K most similar demonstrations just retrieved for this vector
                (similarity strategy, same exclusions): the kNN vote uses them instead of
                searching again.

        Raises:
            LabelError: The library has no labelled images yet.
        """
        predictor = predictor or self.settings.local_predictor
        if predictor not in LOCAL_PREDICTORS:
            raise ConfigError(f"local predictor must be one of {', '.join(LOCAL_PREDICTORS)}, not {predictor!r}")
        self._ensure_ready()
        searcher, pool = self._refresh()
        if not len(pool):
            raise LabelError("the library has no labelled images yet: label or import some first")
        if predictor == "knn":
            k = int(k or self.settings.k)
            if demonstrations is not None and len(demonstrations) >= min(k, len(pool)):
                demos = list(demonstrations[:k])
            else:
                demos = similar(vector, k, "similarity", searcher=searcher, pool=pool, exclude_ids=exclude_ids)
            return self._knn.rank(demos, pool.classes)
        self._fit_probe(pool)
        return self._probe.rank(vector)

    def _fit_probe(self, pool: DemoPool) -> None:
        key = (self.encoder.key, pool.version, self.include_pending)

        def data() -> tuple[np.ndarray, list[str]]:
            ids, vectors = run_job(self._embed_ids(sorted(pool.labels)))
            return vectors, [pool.labels[int(i)] for i in ids]

        self._probe.ensure_fitted(key, data)

    def _trust_key(self) -> tuple[tuple[Any, ...], DemoPool]:
        self._ensure_ready()
        _, pool = self._refresh()
        if not len(pool):
            raise LabelError("the library has no labelled images yet: label or import some first")
        return (self.encoder.key, pool.version, self.include_pending), pool

    def _fit_trust(self, key: tuple[Any, ...], pool: DemoPool, predictor: str | None = None, k: int = 5) -> TrustModel:
        """Build the trust model of ``pool`` (embeddings from the cache), fit the calibration of
        ``predictor`` when given (the slow part, before the swap), and install it under ``key``."""
        ids, vectors = run_job(self._embed_ids(sorted(pool.labels)))
        with self._lock:
            current = self._trust
        cache = current[1].cache if current is not None else None
        model = TrustModel(ids, vectors, [pool.labels[int(i)] for i in ids], encoder_key=self.encoder.key, cache=cache)
        if predictor is not None:
            model.calibration(predictor, k)
        with self._lock:
            self._trust = (key, model)
        return model

    def trust_model(self) -> TrustModel:
        """Novelty reference and calibrations of the current labelled set, fitted now if stale.

        Rebuilt when the labels version moves (calibrations are further keyed by the exact
        (id, label) set, so an undo that restores a labelled set reuses nothing stale).
        """
        key, pool = self._trust_key()
        with self._lock:
            current = self._trust
        if current is not None and current[0] == key:
            return current[1]
        return self._fit_trust(key, pool)

    def _current_trust(self, predictor: str, k: int) -> tuple[TrustModel | None, bool]:
        """The trust model to use now without waiting: ``(model, stale)``.

        When the labels moved since the last fit, the previous model is returned (marked
        stale) and one background thread refits it, calibration of ``predictor`` included,
        so the labelling loop never pays for a refit. With no model yet, a library of up to
        :data:`INLINE_TRUST_FIT` labelled images fits in the caller's thread (about a second);
        a larger one starts the background fit and gets ``(None, True)`` meanwhile.
        """
        key, pool = self._trust_key()
        with self._lock:
            current = self._trust
            if current is not None and current[0] == key:
                return current[1], False
            if current is not None or len(pool) > INLINE_TRUST_FIT:
                if self._trust_thread is None or not self._trust_thread.is_alive():
                    self._trust_thread = threading.Thread(
                        target=self._refit_trust, args=(predictor, k), name="nmid-trust-refit", daemon=True)
                    self._trust_thread.start()
                return (current[1] if current is not None else None), True
        return self._fit_trust(key, pool, predictor, k), False

    def _refit_trust(self, predictor: str, k: int) -> None:
        """Background refit until the model matches the labels (they may move again meanwhile)."""
        try:
            for _ in range(8):  # a bounded chase: a colleague labelling fast must not pin a thread forever
                key, pool = self._trust_key()
                with self._lock:
                    if self._trust is not None and self._trust[0] == key:
                        return
                self._fit_trust(key, pool, predictor, k)
        except Exception:  # noqa: BLE001 - a background refit must never kill the process; the stale one stays
            log.exception("refitting the trust model failed; the previous one stays in use")

    def wait_for_trust(self, timeout: float | None = None) -> bool:
        """Wait for a background refit of the trust model; True when none is running any more."""
        thread = self._trust_thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def assess(
        self, vector: np.ndarray, predictor: str | None = None, k: int | None = None, exclude_ids: Iterable[int] = (),
        *, wait: bool = True, demonstrations: Sequence[Demonstration] | None = None,
    ) -> Assessment:
        """:meth:`predict_local` with calibrated confidence and a novelty score.

        This is what the window should show: ``assessment.ranking`` (calibrated) and, when
        ``assessment.novelty.novel``, the badge ``assessment.novelty.text``.

        Args:
            vector: The query embedding, shape (D,).
            predictor: ``knn`` or ``logreg`` (default: settings').
            k: Neighbours of the kNN vote (default: settings').
            exclude_ids: Library images left out (the query itself).
            wait: True (the CLI): refit the trust model now when the labels moved. False (the
                window's labelling loop): use the previous fit, marked ``stale``, while a
                background thread refits (no fit yet on a large library: the raw ranking,
                ``novelty`` None, marked ``stale``).
            demonstrations: As for :meth:`predict_local` (no second search).
        """
        exclude = [int(i) for i in exclude_ids]
        predictor = predictor or self.settings.local_predictor
        raw = self.predict_local(vector, predictor, k, exclude_ids=exclude, demonstrations=demonstrations)
        k = int(k or self.settings.k)
        if wait:
            model, stale = self.trust_model(), False
        else:
            found, stale = self._current_trust(predictor, k)
            if found is None:
                return Assessment(ranking=raw, raw=raw, novelty=None, stale=True)
            model = found
        return model.assess(raw, vector, k=k, exclude_ids=exclude, stale=stale)

    @property
    def classes(self) -> list[str]:
        """Classes present among the demonstration pool's labels."""
        self._ensure_ready()
        return self._refresh()[1].classes


def _rebuild_limit(searcher: Searcher, size: int) -> float:
    """Drift allowed when opening an index before a rebuild is preferred (as ``needs_rebuild``)."""
    return min(searcher.rebuild_items, searcher.rebuild_fraction * size)
