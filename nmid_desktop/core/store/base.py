"""The library store interface: every other module talks to a library through this.

All SQL lives in the backends (``sqlite.py`` for one person's folder, ``postgres.py``
for a lab's shared library), which implement this class. Records are frozen
dataclasses of plain values, safe to pass between threads.

Vocabulary:
    label source: who or what set a label: ``import``, ``expert``, ``local``
        (local predictor), ``lmm`` (multimodal model, with model name and prompt
        version), ``synthetic``.
    review: ``pending`` (nobody has looked), ``accepted`` (an expert agreed or set
        it), ``rejected`` (left out of exports, training and demonstrations).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# What the library's key-value metadata holds (stored as JSON).
JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]

LABEL_SOURCES = ("import", "expert", "local", "lmm", "synthetic")
REVIEW_STATES = ("pending", "accepted", "rejected")
REVIEW_KINDS = ("review", "kept")  # history kinds of a review row (kept: a suspect label checked and kept)
SPLITS = ("train", "val", "test")
CLASS_KEYS = range(1, 10)  # the digit keys a class can hold


@dataclass(frozen=True)
class ImageRecord:
    """One image (one page of a file) in the library, with its current label."""

    id: int
    sha256: str
    page: int
    path: Path  # where the pixels are read from: the library copy, or the original when referenced
    stored: bool  # True when copied into the library's images/ folder
    original_path: str
    original_name: str
    width: int
    height: int
    n_pages: int
    dtype: str  # numpy dtype name of the raw data, e.g. "uint8", "uint16", "float32"
    pixel_size_m: float | None
    crop_box: tuple[int, int, int, int] | None  # (x0, y0, x1, y1) of the micrograph proper
    synthetic: bool
    source_image_id: int | None  # for synthetic images: the real image they were made from
    added_at: str  # ISO 8601 UTC
    label: str | None
    label_source: str | None
    label_model: str | None
    label_confidence: float | None
    review: str
    # Who set the label, with which prompt, and when: export provenance needs them.
    label_actor: str | None = None
    label_prompt_version: str | None = None
    label_at: str | None = None
    # Grows with every change of this image's label or review: pass it back as
    # ``set_label(..., expected_version=...)`` to be told when a colleague got there first.
    label_version: int = 0


@dataclass(frozen=True)
class ClassRecord:
    """One class of the library's taxonomy."""

    id: int
    name: str
    description: str
    color: str  # "#rrggbb" or ""
    count: int  # images currently carrying this label (rejected excluded)
    # The number key (1-9) that labels with this class, stored in the library so it is the
    # same for every user and survives new classes, renames and merges; None: no key.
    key: int | None = None


@dataclass(frozen=True)
class LabelEvent:
    """One row of the label history; undo and redo walk these."""

    id: int
    image_id: int
    old_label: str | None
    new_label: str | None
    old_review: str
    new_review: str
    source: str
    actor: str
    model: str | None
    prompt_version: str | None
    confidence: float | None
    at: str
    undone: bool
    kind: str = "label"  # label, review, kept (a suspect label checked and kept), merge, or conflict (a refused change)
    user: str = ""  # whose undo stack the change is on (the store's user)


@dataclass(frozen=True)
class PredictionRecord:
    """A prediction by a local predictor or a multimodal model, kept for review and audit."""

    image_id: int
    predictor: str  # "knn", "logreg", "lmm"
    label: str | None  # None when the prediction is invalid
    ranking: list[tuple[str, float]]  # best first, (class, probability)
    confidence: float | None
    model: str | None = None
    prompt_version: str | None = None
    rationale: str = ""
    demo_ids: list[int] = field(default_factory=list)
    valid: bool = True
    reason: str = ""  # why invalid, or notes
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    id: int | None = None
    at: str | None = None


@dataclass(frozen=True)
class DescriptionRow:
    """One answered question of a structured description."""

    group: str
    question: str
    answer: str


@dataclass(frozen=True)
class DescriptionRecord:
    """A structured description of one image by one model and prompt version."""

    image_id: int
    model: str
    prompt_version: str
    rows: list[DescriptionRow]
    id: int | None = None
    at: str | None = None


@dataclass(frozen=True)
class LabelChanges:
    """What changed since a labels version: what an exact buffer needs to stay current.

    ``full`` means the taxonomy changed (a rename) and the caller should reload
    ``labelled()``; otherwise ``images`` lists every image whose label or review changed.
    """

    version: int
    images: list[ImageRecord]
    full: bool = False


@dataclass(frozen=True)
class QueryStart:
    """What the window's query reads before it searches, read together.

    On a shared library this is one round trip to the server instead of four.

    Attributes:
        record: The image's record.
        embedding: Its cached embedding of the encoder asked for, shape (D,) float32; None when
            there is none yet (or no encoder was named).
        labels_version: ``labels_version()`` as read with the record.
        answer: The image's newest prediction of the predictor asked for (the model's stored
            answer), or None.
    """

    record: ImageRecord
    embedding: np.ndarray | None
    labels_version: int
    answer: PredictionRecord | None


@dataclass(frozen=True)
class ImageFilter:
    """Which images a query returns. ``None`` means "do not filter on this"."""

    label: str | None = None
    label_source: str | None = None
    unlabelled: bool | None = None
    review: str | None = None
    synthetic: bool | None = None
    ids: Sequence[int] | None = None


class Store(abc.ABC):
    """A library: images, taxonomy, labels with history, embeddings, predictions, splits.

    ``root`` is the folder holding the library's files (images, trained models); on a
    shared library it is this PC's mount of the lab's shared folder. ``location`` names
    the library for people (a folder, or a URL without its password). ``user`` is who
    works with it: every change records them, and undo walks their own changes.
    """

    root: Path
    user: str = ""

    @property
    def location(self) -> str:
        """The library's name for messages: its folder, or its URL with the password redacted."""
        return str(self.root)

    @property
    def index_dir(self) -> Path:
        """Where this PC keeps the library's nearest-neighbour indexes."""
        return self.root / "index"

    # -- lifecycle -------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None:
        """Close connections; the store cannot be used afterwards."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """Group many writes into one transaction (all or nothing). Nestable."""

    # -- images ----------------------------------------------------------------------
    @abc.abstractmethod
    def add_image(
        self,
        source: Path,
        *,
        sha256: str,
        page: int,
        n_pages: int,
        width: int,
        height: int,
        dtype: str,
        pixel_size_m: float | None = None,
        crop_box: tuple[int, int, int, int] | None = None,
        copy: bool = True,
        synthetic: bool = False,
        source_image_id: int | None = None,
        original_path: str | None = None,
    ) -> tuple[int, bool]:
        """Add an image (one page of a file), copying it into the library unless ``copy`` is False.

        Returns:
            ``(image_id, created)``; ``created`` is False when (sha256, page) was already
            there, in which case nothing changes and the existing id is returned.
        """

    @abc.abstractmethod
    def find_image(self, sha256: str, page: int = 0) -> ImageRecord | None:
        """The image with this content hash and page, if present."""

    @abc.abstractmethod
    def get_image(self, image_id: int) -> ImageRecord:
        """One image; raises ``LibraryError`` if the id is unknown."""

    @abc.abstractmethod
    def images(self, flt: ImageFilter | None = None, *, limit: int | None = None, offset: int = 0) -> list[ImageRecord]:
        """Images matching the filter, ordered by id."""

    @abc.abstractmethod
    def count_images(self, flt: ImageFilter | None = None) -> int:
        """How many images match the filter."""

    @abc.abstractmethod
    def set_crop_box(self, image_id: int, crop_box: tuple[int, int, int, int] | None) -> None:
        """Replace an image's data bar crop box (the expert may correct it)."""

    # -- taxonomy --------------------------------------------------------------------
    @abc.abstractmethod
    def classes(self) -> list[ClassRecord]:
        """The taxonomy, ordered by name, with image counts."""

    @abc.abstractmethod
    def add_class(self, name: str, description: str = "", color: str = "") -> ClassRecord:
        """Create a class (or return the existing one); invalid names raise ``LabelError``."""

    @abc.abstractmethod
    def update_class(self, name: str, *, description: str | None = None, color: str | None = None) -> ClassRecord:
        """Change a class's description or colour."""

    @abc.abstractmethod
    def rename_class(self, old: str, new: str) -> ClassRecord:
        """Rename a class; every image carrying it follows. ``new`` must not exist."""

    @abc.abstractmethod
    def merge_classes(self, source: str, target: str, actor: str = "") -> int:
        """Relabel every image of ``source`` as ``target`` (recorded in history) and drop ``source``.

        Returns:
            The number of images relabelled.
        """

    @abc.abstractmethod
    def set_class_key(self, name: str, key: int | None) -> list[ClassRecord]:
        """Give a class number key ``key`` (1-9), or none with None, in one transaction.

        The class that held ``key`` takes this class's old key (a swap; none if it had none).
        New classes take the lowest free key; a rename keeps it, a merge keeps the target's
        and frees the source's, a delete frees it.

        Returns:
            The classes whose key changed (one, or two for a swap).

        Raises:
            LabelError: No such class, or ``key`` outside 1-9.
        """

    @abc.abstractmethod
    def delete_class(self, name: str) -> None:
        """Remove a class that no image carries (rejected ones included).

        Raises:
            LabelError: No such class, or images still carry it (merge it instead).
        """

    # -- labels and history -------------------------------------------------------------
    @abc.abstractmethod
    def set_label(
        self,
        image_id: int,
        label: str | None,
        *,
        source: str,
        actor: str = "",
        model: str | None = None,
        prompt_version: str | None = None,
        confidence: float | None = None,
        review: str | None = None,
        expected_version: int | None = None,
    ) -> LabelEvent:
        """Set (or clear, with None) an image's label; unknown classes are created.

        ``review`` defaults to ``accepted`` for source ``expert`` and ``import``, and
        ``pending`` otherwise. The change is one history row; it clears the redo stack.
        ``actor`` defaults to the store's user.

        Raises:
            LabelConflict: ``expected_version`` was given and the image's
                ``label_version`` has moved on (a colleague relabelled it); the refused
                change is kept in the history as a ``conflict`` event.
        """

    @abc.abstractmethod
    def set_review(self, image_id: int, review: str, *, actor: str = "", kind: str = "review") -> LabelEvent:
        """Accept or reject an image's current label (one history row).

        Args:
            kind: The history row's kind: ``review``, or ``kept`` for a label an expert checked
                in the "likely mislabelled" queue and kept as it is.
        """

    @abc.abstractmethod
    def undo(self) -> LabelEvent | None:
        """Revert this user's latest label change not yet undone; None when there is nothing to undo.

        Raises:
            UndoConflict: someone else has changed the image since; nothing is changed.
        """

    @abc.abstractmethod
    def redo(self) -> LabelEvent | None:
        """Re-apply this user's latest undone change; None when there is nothing to redo."""

    @abc.abstractmethod
    def history(self, image_id: int | None = None, limit: int = 100) -> list[LabelEvent]:
        """Label events, newest first, optionally for one image."""

    @abc.abstractmethod
    def labels_version(self) -> int:
        """A number that grows with every label, review, class or undo/redo change.

        Predictors and the index compare it with the value they were built at.
        """

    @abc.abstractmethod
    def changes_since(self, version: int) -> LabelChanges:
        """Images whose label or review changed after ``labels_version()`` was ``version``."""

    def wait_for_changes(self, since: int, timeout_s: float = 30.0) -> int:
        """Block until ``labels_version()`` exceeds ``since`` or ``timeout_s`` passes; returns the version.

        For a watcher thread (the window's library browser refreshing when a colleague labels).
        This default polls twice a second; the PostgreSQL backend is woken by LISTEN/NOTIFY.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            version = self.labels_version()
            if version > since or time.monotonic() >= deadline:
                return version
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    @abc.abstractmethod
    def labelled(self, *, include_pending: bool = True, include_synthetic: bool = False) -> list[tuple[int, str]]:
        """``(image_id, label)`` of every labelled, non-rejected image, ordered by id.

        Synthetic images are included only when accepted and ``include_synthetic``.
        """

    # -- embeddings --------------------------------------------------------------------
    @abc.abstractmethod
    def put_embeddings(self, encoder_key: str, image_ids: Sequence[int], vectors: np.ndarray) -> None:
        """Cache embeddings. Shape of ``vectors``: (N, D) float32."""

    @abc.abstractmethod
    def get_embeddings(self, encoder_key: str, image_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cached embeddings as ``(ids (N,) int64, vectors (N, D) float32)``; missing ids are left out."""

    def embedded_ids(self, encoder_key: str) -> np.ndarray:
        """Ids of the images with a cached embedding for ``encoder_key``, shape (N,) int64, ascending.

        What a resumable embedding job skips. Backends override this to read ids only, not vectors.
        """
        ids, _ = self.get_embeddings(encoder_key)
        return np.sort(np.asarray(ids, dtype=np.int64))

    @abc.abstractmethod
    def drop_embeddings(self, encoder_key: str | None = None) -> None:
        """Forget cached embeddings of one encoder (or all)."""

    # -- predictions, descriptions, usage -------------------------------------------------
    @abc.abstractmethod
    def add_prediction(self, prediction: PredictionRecord) -> int:
        """Store a prediction; returns its id."""

    @abc.abstractmethod
    def predictions(self, image_id: int) -> list[PredictionRecord]:
        """An image's predictions, newest first."""

    @abc.abstractmethod
    def query_start(self, image_id: int, encoder_key: str | None, predictor: str = "lmm") -> QueryStart:
        """An image's record, cached embedding, the labels version and its newest ``predictor`` answer.

        The reads a query makes before its search, in one request where the backend can
        (one round trip on PostgreSQL). ``encoder_key`` None reads no embedding.

        Raises:
            LibraryError: No image with that id.
        """

    @abc.abstractmethod
    def query_finish(self, demo_ids: Sequence[int], prediction: PredictionRecord | None) -> list[ImageRecord]:
        """Store a query's local prediction (when given) and read its demonstrations' records.

        The writes and reads a query makes after its search, in one request where the backend
        can. Records come in the order of ``demo_ids``; ids not in the library are left out.
        """

    @abc.abstractmethod
    def latest_predictions(self, predictor: str) -> dict[int, PredictionRecord]:
        """The newest prediction of one predictor for every image that has one."""

    @abc.abstractmethod
    def add_description(self, description: DescriptionRecord) -> int:
        """Store a structured description; returns its id."""

    @abc.abstractmethod
    def descriptions(self, image_id: int) -> list[DescriptionRecord]:
        """An image's descriptions, newest first."""

    @abc.abstractmethod
    def record_usage(self, *, kind: str, model: str, tokens_in: int, tokens_out: int, cost_usd: float, images: int = 0) -> None:
        """Account for one paid API call (kind: describe, predict, synthesize, questions)."""

    @abc.abstractmethod
    def total_cost(self) -> float:
        """API spending recorded in this library, in USD."""

    # -- splits and metadata ---------------------------------------------------------------
    @abc.abstractmethod
    def get_split(self) -> dict[int, str]:
        """The stored split: image id -> train/val/test (empty if none defined)."""

    @abc.abstractmethod
    def set_split(self, assignment: dict[int, str]) -> None:
        """Store split assignments. Images already in ``test`` keep it: a test set is fixed once defined."""

    @abc.abstractmethod
    def get_meta(self, key: str, default: JsonValue = None) -> JsonValue:
        """A JSON value stored under ``key``."""

    @abc.abstractmethod
    def set_meta(self, key: str, value: JsonValue) -> None:
        """Store a JSON-serialisable value under ``key``."""

    def iter_images(self, flt: ImageFilter | None = None, batch: int = 1000) -> Iterator[ImageRecord]:
        """All matching images, fetched in batches so 20,000 rows never sit in one list."""
        offset = 0
        while True:
            rows = self.images(flt, limit=batch, offset=offset)
            if not rows:
                return
            yield from rows
            offset += len(rows)
