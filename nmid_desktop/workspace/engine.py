"""The window's engine: the library store and the classifier, owned by one worker thread.

An :class:`Engine` is created by the ``engine`` lane of the window's
:class:`~nmid_desktop.qt.workers.JobManager`, in that lane's thread, and every
method below runs there, one call after another. That order is what makes an
accepted label a demonstration for the very next query: the label write and
``Classifier.notify_labelled`` finish before the next search starts.

No Qt here: the engine is plain Python and is tested without a display.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nmid_desktop.core.config import Settings
from nmid_desktop.core.errors import LabelConflict, LibraryError, LibraryUnavailable, NmidError, UndoConflict
from nmid_desktop.core.jobs import CancelToken, Job, Progress
from nmid_desktop.core.store import ImageFilter, ImageRecord, LabelEvent, PredictionRecord, Store, open_library
from nmid_desktop.inference.protocol import ImageEncoder
from nmid_desktop.predict.novelty import Novelty
from nmid_desktop.predict.ranking import Ranking
from nmid_desktop.workspace.browse import BrowserRow
from nmid_desktop.workspace.display import DemoTile, ImagePayload, ModelAnswer, ThumbnailCache, load_image

if TYPE_CHECKING:
    from nmid_desktop.predict.service import Classifier

log = logging.getLogger(__name__)

DEMO_THUMB_SIZE = 160
RECORDS_KEPT = 4096  # records kept for browsing while a shared library's server is away


DEMOS_INCLUDE_PENDING = False  # the window's and the batch's demonstrations: accepted labels only


@dataclass(frozen=True)
class ClassInfo:
    """One class with its colour, image count and number key (1-9, None: no key)."""

    name: str
    color: str
    count: int
    key: int | None = None


@dataclass(frozen=True)
class LibraryStatus:
    """What the status bar and the class chips show.

    Attributes:
        root: The library folder.
        n_images: Images in the library.
        n_labelled: Labelled, non-rejected images.
        n_pending: Images whose label awaits review.
        classes: The taxonomy.
        encoder: Encoder key, "" before the classifier is ready.
        device: Device of the encoder (``cpu``, ``cuda:0``).
        engine: What runs the encoder (``onnxruntime`` or ``torch``), "" before it is ready.
        runtime: One line on the engine (version, provider, threads), for a tooltip.
        index_state: A short phrase: "ready", "building", "stale: N new labels" ...
        api_cost_usd: API spending recorded in this library.
        labels_version: ``store.labels_version()``.
        location: The library for people: its folder, or its URL with the password redacted.
    """

    root: Path
    n_images: int
    n_labelled: int
    n_pending: int
    classes: tuple[ClassInfo, ...]
    encoder: str = ""
    device: str = ""
    engine: str = ""
    runtime: str = ""
    index_state: str = ""
    api_cost_usd: float = 0.0
    labels_version: int = 0
    location: str = ""

    @property
    def class_names(self) -> list[str]:
        """Class names in taxonomy order."""
        return [c.name for c in self.classes]

    @property
    def class_keys(self) -> dict[str, int]:
        """The library's number keys: class name -> digit (classes without a key left out)."""
        return {c.name: c.key for c in self.classes if c.key is not None}


@dataclass(frozen=True)
class QueryResult:
    """Everything the window shows for one image after retrieval and local prediction.

    Attributes:
        image_id: The query image.
        record: Its library record (current label included).
        tiles: The demonstrations, best first.
        ranking: ``(label, probability)`` best first; empty when nothing is labelled.
        predictor: ``knn`` or ``logreg``.
        demo_ids: Ids of the demonstrations (for the model prompt).
        timings: Seconds per stage (embed, search, predict, thumbnails).
        stored_answer: The model's newest stored answer for this image (paid for once: shown
            again on reopening instead of asking again), or None.
        novelty: How unlike the library the image is (None without a local prediction); when
            ``novelty.novel`` the window shows its badge instead of a confident label.
        trust_stale: The calibration and novelty reference predate the latest label changes
            (refitted in the background).
    """

    image_id: int
    record: ImageRecord
    tiles: tuple[DemoTile, ...]
    ranking: tuple[tuple[str, float], ...]
    predictor: str
    demo_ids: tuple[int, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    stored_answer: ModelAnswer | None = None
    novelty: Novelty | None = None
    trust_stale: bool = False

    @property
    def trusted(self) -> bool:
        """False when the image is unlike the library: its local suggestion is not to be accepted blindly."""
        return self.novelty is None or not self.novelty.novel


@dataclass(frozen=True)
class OpenResult:
    """The library images a drop or an Open resolved to, and what the import said."""

    image_ids: tuple[int, ...]
    summary: str
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelRefused:
    """A label change, undo or redo refused because a colleague changed the image meanwhile.

    Attributes:
        image_id: The image.
        message: Says who set which label (from ``LabelConflict`` / ``UndoConflict``).
        record: The image as it is now (their label).
    """

    image_id: int
    message: str
    record: ImageRecord


def refused(engine: Engine, exc: LabelConflict | UndoConflict) -> LabelRefused:
    """The refusal as plain data for the window (the image re-read, with the colleague's label)."""
    return LabelRefused(exc.image_id, str(exc), engine.store.get_image(exc.image_id))


@dataclass(frozen=True)
class LabelChange:
    """A label write (or undo/redo) as the window needs to know it."""

    image_id: int
    record: ImageRecord
    event: LabelEvent | None
    action: str  # "set", "undo", "redo", "nothing to undo", "nothing to redo"


def classifier_changed(old: Settings, new: Settings) -> bool:
    """Whether new settings need a fresh classifier (another encoder, or the data-bar crop switched)."""
    return old.encoder != new.encoder or old.crop_data_bar != new.crop_data_bar


class Engine:
    """Store plus classifier for one library.

    Created in the engine lane's thread; label writes and queries run there, in order.
    :meth:`prepare`, :meth:`rebuild` and :meth:`status` may also run in other worker
    threads: the classifier is thread-safe and the store gives each thread its own
    connection, so a rebuild never holds up the next query.
    """

    def __init__(
        self,
        library: Path | str,
        settings: Settings,
        thumbnails: ThumbnailCache | None = None,
        encoder: ImageEncoder | None = None,
    ) -> None:
        from nmid_desktop.workspace.library import as_location

        self.library = as_location(library)  # a folder, or a shared library's postgresql:// URL
        self.settings = settings
        # A shared library's images live in this PC's mount of the lab folder, named in the settings.
        shared = Path(settings.shared_folder) if settings.shared_folder else None
        self.store: Store = open_library(self.library, shared_folder=shared, user=settings.user or None)
        self.thumbnails = thumbnails or ThumbnailCache()
        self._encoder = encoder  # a loaded Encoder to share (tests, benchmarks); None: the library's
        self._lock = threading.Lock()
        self._classifier = self._new_classifier()
        self._records: OrderedDict[int, ImageRecord] = OrderedDict()  # the newest read of each, for browsing offline
        self._changes = 0  # label changes this engine made or took (a query re-reads its record after one)

    def _new_classifier(self) -> Classifier:
        from nmid_desktop.predict.service import Classifier

        # Only accepted labels teach: a batch's pending predictions (and the model's) are not
        # demonstrations until someone accepts them, so one mistake cannot teach the next query.
        return Classifier(self.store, self.settings, encoder=self._encoder, include_pending=DEMOS_INCLUDE_PENDING)

    def close(self) -> None:
        """Release the store (called in the engine thread when the lane stops)."""
        self.store.close()

    # -- classifier -------------------------------------------------------------------------
    @property
    def classifier(self) -> Classifier:
        """The library's :class:`~nmid_desktop.predict.service.Classifier` (thread-safe)."""
        with self._lock:
            return self._classifier

    def update_settings(self, settings: Settings) -> None:
        """New settings; a changed encoder or crop choice means a fresh classifier."""
        with self._lock:
            old, self.settings = self.settings, settings
            if classifier_changed(old, settings):
                if old.encoder != settings.encoder:
                    self._encoder = None  # a shared encoder no longer applies
                self._classifier = self._new_classifier()
            else:
                self._classifier.settings = settings

    def use_encoder(self, name: str) -> None:
        """Record ``name`` as the library's encoder (it wins over the settings' choice), then start over."""
        from nmid_desktop.inference.loader import set_library_encoder

        set_library_encoder(self.store, name)
        self.reload_classifier()

    def reload_classifier(self) -> None:
        """Start over with a fresh classifier (e.g. after training a new encoder)."""
        with self._lock:
            self._encoder = None
            self._classifier = self._new_classifier()

    def prepare(self, token: CancelToken) -> Job[LibraryStatus]:
        """Load the encoder and the index, embedding what is missing; yields progress."""
        yield Progress(0, 0, "loading the encoder")
        classifier = self.classifier
        classifier.encoder  # noqa: B018 - loads the weights here, in the worker, not in a query
        yield from classifier.prepare()
        return self.status()

    def rebuild(self, token: CancelToken) -> Job[LibraryStatus]:
        """Rebuild the index from the current labels; queries keep working meanwhile."""
        yield from self.classifier.rebuild_index()
        return self.status()

    # -- library facts -----------------------------------------------------------------------
    def status(self) -> LibraryStatus:
        """Counts, taxonomy, encoder and index state, spending."""
        store = self.store
        classes = tuple(ClassInfo(c.name, c.color, c.count, c.key) for c in store.classes())
        n_images = store.count_images()
        n_labelled = store.count_images(ImageFilter(unlabelled=False))
        n_rejected = store.count_images(ImageFilter(unlabelled=False, review="rejected"))
        n_pending = store.count_images(ImageFilter(review="pending", unlabelled=False))
        encoder = device = engine = runtime = ""
        classifier = self.classifier
        if classifier.ready:
            encoder = classifier.encoder.key
            device = str(classifier.encoder.device)
            engine = classifier.encoder.engine
            runtime = classifier.encoder.runtime
            index_state = "rebuild due" if classifier.needs_rebuild else "ready"
        else:
            index_state = "not loaded"
        return LibraryStatus(
            root=store.root,
            location=store.location,
            n_images=n_images,
            n_labelled=n_labelled - n_rejected,
            n_pending=n_pending,
            classes=classes,
            encoder=encoder,
            device=str(device),
            engine=engine,
            runtime=runtime,
            index_state=index_state,
            api_cost_usd=store.total_cost(),
            labels_version=store.labels_version(),
        )

    # -- opening images --------------------------------------------------------------------------
    def open_paths(self, paths: list[Path], token: CancelToken) -> Job[OpenResult]:
        """Import dropped or opened files (folders too) and return their library ids, in order.

        Files already in the library (same bytes) are found, not copied again.
        """
        from nmid_desktop.core.importer import import_files

        report = yield from import_files(
            self.store,
            [Path(p) for p in paths],
            max_pixels=self.settings.max_pixels,
            detect_bar=self.settings.crop_data_bar,
            actor="",  # the store records its user (settings name, else the OS login)
        )
        ids: list[int] = []
        skipped: list[str] = []
        for item in report.items:
            if item.image_id is not None and item.image_id not in ids:
                ids.append(int(item.image_id))
            elif item.image_id is None:
                skipped.append(f"{Path(item.path).name}: {item.reason}")
        return OpenResult(tuple(ids), report.summary(), tuple(skipped))

    def record(self, image_id: int) -> ImageRecord:
        """One image's record (the last one read while a shared library's server is away)."""
        try:
            record = self.store.get_image(image_id)
        except LibraryUnavailable:
            with self._lock:
                kept = self._records.get(image_id)
            if kept is None:
                raise
            return kept
        self._remember([record])
        return record

    def _remember(self, records: Sequence[ImageRecord]) -> None:
        with self._lock:
            for record in records:
                self._records[record.id] = record
                self._records.move_to_end(record.id)
            while len(self._records) > RECORDS_KEPT:
                self._records.popitem(last=False)

    # -- colleagues' changes ---------------------------------------------------------------------
    def take_changes(self, records: Sequence[ImageRecord]) -> None:
        """Take label changes made elsewhere (a colleague, another window): the watcher's intake.

        The same path as this window's own accepted label: the classifier re-reads the
        labels and puts the changed images' embeddings (cached in the library, or computed
        now) into its exact buffer, so a colleague's accepted label is a demonstration for
        the next query without an index rebuild. Runs in the watcher's thread; the
        classifier is thread-safe.
        """
        self._remember(records)
        if records:
            self._notify([r.id for r in records])

    # -- the query -----------------------------------------------------------------------------
    def query(self, image_id: int, token: CancelToken, fallback: BrowserRow | None = None) -> Job[QueryResult]:
        """Show, embed, retrieve and predict for one library image.

        Args:
            image_id: The library image.
            token: Cancel token (every yield is a cancel point too).
            fallback: The browser's row for the image: while a shared library's server is
                away its file is still shown (from the shared folder) before the query fails.

        Yields:
            First ``Progress(data=ImagePayload)`` so the window shows the image at once,
            then plain progress between stages (each a cancel point).
        """
        settings = self.settings
        classifier = self.classifier
        with self._lock:
            changes = self._changes
        try:
            # One read (one round trip on a shared library): record, cached embedding, labels
            # version and the model's stored answer. The encoder is not loaded here for its key:
            # the image is shown first, whatever the encoder is doing.
            start = self.store.query_start(image_id, classifier.loaded_encoder_key)
        except LibraryUnavailable:
            with self._lock:
                kept = self._records.get(image_id)
            shown = (kept.path, kept.page, kept.crop_box) if kept is not None else (
                (fallback.path, fallback.page, fallback.crop_box) if fallback is not None else None
            )
            if shown is None:
                raise
            yield Progress(1, 4, "the shared library is away", data=load_image(
                shown[0], shown[1], shown[2] if settings.crop_data_bar else None,
                image_id=image_id, max_pixels=settings.max_pixels,
            ))
            raise
        record = start.record
        self._remember([record])
        payload: ImagePayload = load_image(
            record.path, record.page, record.crop_box if settings.crop_data_bar else None,
            image_id=image_id, max_pixels=settings.max_pixels,
        )
        yield Progress(1, 4, "embedding", data=payload)
        if not classifier.ready:
            # Preparing runs in another worker; the search below waits for it (the classifier's lock).
            yield Progress(1, 4, "waiting for the encoder and the index")
        timings: dict[str, float] = {}
        start_t = time.perf_counter()
        vector = (
            np.asarray(start.embedding, dtype=np.float32) if start.embedding is not None
            else classifier.embed_decoded(image_id, payload.model_view())
        )
        timings["embed"] = time.perf_counter() - start_t
        yield Progress(2, 4, "searching")
        with classifier.labels_at(start.labels_version):  # the version read with the record, read once
            start_t = time.perf_counter()
            # Their records are read with the prediction stored, below.
            demos = classifier.similar(vector, k=settings.k, strategy=settings.strategy, exclude_ids=(image_id,),
                                       details=False)
            timings["search"] = time.perf_counter() - start_t
            start_t = time.perf_counter()
            ranking_items: tuple[tuple[str, float], ...] = ()
            novelty: Novelty | None = None
            trust_stale = False
            ranking: Ranking | None = None
            if demos:
                try:
                    # The similarity strategy's demonstrations are the kNN vote's: no second search.
                    reuse = demos if settings.strategy == "similarity" else None
                    # Calibrated, with the novelty score; never waits for a refit after a label change.
                    assessment = classifier.assess(vector, settings.local_predictor, exclude_ids=(image_id,),
                                                   wait=False, demonstrations=reuse)
                    ranking = assessment.ranking
                    novelty, trust_stale = assessment.novelty, assessment.stale
                except NmidError as exc:
                    log.info("no local prediction for image %s: %s", image_id, exc)
                if ranking is not None:
                    ranking_items = tuple((str(c), float(p)) for c, p in ranking.items)
            # The local prediction stored and the demonstrations' records read: one request.
            prediction = ranking.to_prediction(image_id) if ranking is not None else None
            finished = self.store.query_finish([int(d.image_id) for d in demos], prediction) if demos else []
            records = {r.id: r for r in finished}
            timings["predict"] = time.perf_counter() - start_t
        yield Progress(3, 4, "thumbnails")
        start_t = time.perf_counter()
        tiles = tuple(self._tile(d, records.get(int(d.image_id))) for d in demos)
        timings["thumbnails"] = time.perf_counter() - start_t
        with self._lock:
            moved = self._changes != changes
        return QueryResult(
            image_id=image_id,
            # A label changed meanwhile (this window's key, a colleague's change taken): read it again.
            record=self.record(image_id) if moved else record,
            tiles=tiles,
            ranking=ranking_items,
            predictor=settings.local_predictor,
            demo_ids=tuple(int(d.image_id) for d in demos),
            timings=timings,
            stored_answer=model_answer(start.answer),
            novelty=novelty,
            trust_stale=trust_stale,
        )

    def _tile(self, demo: Any, record: ImageRecord | None = None) -> DemoTile:
        record = record or self.store.get_image(int(demo.image_id))
        try:
            thumb: np.ndarray | None = self.thumbnails.get(
                record.sha256, record.page, DEMO_THUMB_SIZE, record.path,
                record.crop_box if self.settings.crop_data_bar else None, self.settings.max_pixels,
            )
        except NmidError as exc:
            log.info("no thumbnail for demonstration %s: %s", record.id, exc)
            thumb = None
        return DemoTile(
            image_id=record.id,
            label=str(demo.label),
            similarity=float(demo.similarity),
            source=str(getattr(demo, "source", "") or record.label_source or ""),
            synthetic=bool(getattr(demo, "synthetic", False) or record.synthetic),
            name=record.original_name,
            thumb=thumb,
        )

    # -- labels ------------------------------------------------------------------------------------
    def set_label(
        self,
        image_id: int,
        label: str,
        *,
        source: str = "expert",
        model: str | None = None,
        confidence: float | None = None,
        actor: str = "",
        expected_version: int | None = None,
    ) -> LabelChange:
        """Accept or correct a label (always ``accepted``: an expert decided), then tell the classifier.

        Args:
            expected_version: The image's ``label_version`` as the user saw it: a colleague's
                change since then refuses this one (``LabelConflict``) instead of overwriting it.
        """
        event = self.store.set_label(
            image_id, label, source=source, actor=actor, model=model, confidence=confidence, review="accepted",
            expected_version=expected_version,
        )
        self._notify([image_id])
        return LabelChange(image_id, self.store.get_image(image_id), event, "set")

    def set_review(self, image_id: int, review: str, actor: str = "", kind: str = "review") -> LabelChange:
        """Accept or reject the current label without changing it (``kind``: the history row's, e.g. ``kept``)."""
        event = self.store.set_review(image_id, review, actor=actor, kind=kind)
        self._notify([image_id])
        return LabelChange(image_id, self.store.get_image(image_id), event, "review")

    def undo(self) -> LabelChange | None:
        """Undo the latest label change (None when there is none)."""
        event = self.store.undo()
        if event is None:
            return None
        self._notify([event.image_id])
        return LabelChange(event.image_id, self.store.get_image(event.image_id), event, "undo")

    def redo(self) -> LabelChange | None:
        """Redo the latest undone change (None when there is none)."""
        event = self.store.redo()
        if event is None:
            return None
        self._notify([event.image_id])
        return LabelChange(event.image_id, self.store.get_image(event.image_id), event, "redo")

    def change_class(self, action: str, name: str, other: str = "", actor: str = "") -> str:
        """Rename, merge or delete a class, as ``nmid classes`` does; the classifier follows.

        Args:
            action: ``"rename"`` (to ``other``), ``"merge"`` (into ``other``) or ``"delete"`` (empty only).
            name: The class to change.
            other: The new name, or the class to merge into.
            actor: Who made the change.

        Returns:
            A line saying what was done.

        Raises:
            LabelError: Unknown class, a name taken, or a class still in use for delete.
        """
        store = self.store
        if action == "rename":
            record = store.rename_class(name, other)
            done, label = f"Renamed class {name!r} to {record.name!r}", record.name
        elif action == "merge":
            n = store.merge_classes(name, other, actor=actor)
            done, label = f"Merged class {name!r} into {other!r} ({n} image(s) relabelled)", other
        elif action == "delete":
            store.delete_class(name)
            return f"Deleted the empty class {name!r}"
        else:
            raise ValueError(f"unknown class action {action!r}")
        self._notify([r.id for r in store.iter_images(ImageFilter(label=label))])
        return done

    def set_class_key(self, name: str, key: int | None) -> str:
        """Give a class number key ``key`` (1-9, None for none), swapping with its holder.

        Returns:
            A line saying what changed.

        Raises:
            LabelError: Unknown class or a key outside 1-9.
        """
        changed = self.store.set_class_key(name, key)
        if not changed:
            return f"Class {name!r} already has that key"
        return "Keys: " + ", ".join(f"{c.name!r} {c.key or 'none'}" for c in changed)

    def _notify(self, ids: list[int]) -> None:
        with self._lock:
            self._changes += 1
        classifier = self.classifier
        if classifier.ready:
            classifier.notify_labelled(ids)


def model_answer(latest: PredictionRecord | None) -> ModelAnswer | None:
    """The model's stored answer for an image as the card shows it (None when never asked)."""
    if latest is None:
        return None
    return ModelAnswer(
        model=latest.model or "",
        label=latest.label,
        confidence=latest.confidence,
        rationale=latest.rationale,
        ranking=tuple(label for label, _ in latest.ranking),
        valid=latest.valid,
        reason=latest.reason,
        cost_usd=latest.cost_usd,
    )


def open_engine(
    library: Path | str, settings: Settings, thumbnails: ThumbnailCache | None = None, encoder: ImageEncoder | None = None
) -> Engine:
    """The engine lane's context factory (runs in the lane's thread)."""
    try:
        return Engine(library, settings, thumbnails, encoder)
    except NmidError:
        raise
    except OSError as exc:
        raise LibraryError(f"cannot open the library {library}: {exc}") from exc


class EngineRef:
    """The engine made in the lane's thread, handed to jobs in other threads."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.engine: Engine | None = None
        self.error: BaseException | None = None

    def set(self, engine: Engine) -> None:
        """The lane made the engine."""
        self.engine = engine
        self._event.set()

    def fail(self, exc: BaseException) -> None:
        """The lane could not make the engine."""
        self.error = exc
        self._event.set()

    def wait(self, token: CancelToken) -> Engine:
        """The engine, once the lane has made it (cancellable; raises the lane's error)."""
        while not self._event.wait(0.05):
            token.raise_if_cancelled()
        if self.engine is None:
            raise self.error if isinstance(self.error, Exception) else RuntimeError("the library is not open")
        return self.engine


def build_demo(engine: Engine, token: CancelToken) -> Job[str | None]:
    """Fill an empty library with the demo images (a job on the engine lane); returns the import summary."""
    from nmid_desktop.workspace.library import fill_demo

    report = yield from fill_demo(engine.store, engine.settings)
    return None if report is None else report.summary()
