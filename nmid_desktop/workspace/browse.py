"""The library browser's rows: filters, review-queue orders, keyset pages from the store (without Qt).

The window pages: :func:`fetch_page` reads one page after a cursor (the store answers the
filters and the order with an index, see ``core/store/sql_browse.py``), :func:`fetch_ids`
reads a page again by its ids (the window keeps only ids for rows scrolled away), and
:func:`count_rows` counts. :func:`fetch_rows` (every row at once) and :func:`review_queue`
(the queue ordered in Python) remain for small lists and as the reference the store's
order is tested against.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from nmid_desktop.core.errors import LibraryError
from nmid_desktop.core.jobs import CancelToken, Progress, ensure_worker_thread
from nmid_desktop.core.store import ImageFilter, ImageRecord, Store
from nmid_desktop.core.store.sql import SqlStore
from nmid_desktop.core.store.sql_browse import BrowseCursor, BrowseFilter, BrowseItem

ORDERS = {
    "id": "Library order",
    "uncertain": "Review queue: most uncertain first",
    "disagree": "Review queue: local and model disagree first",
}


@dataclass(frozen=True)
class BrowserRow:
    """One image as the browser lists it (plain data, made in a worker).

    Attributes:
        image_id: Library id.
        name: File name it was imported as.
        label: Current label or None.
        source: Who set the label.
        review: pending, accepted or rejected.
        synthetic: A synthetic image.
        sha256: Content hash (thumbnail cache key).
        page: Page index.
        path: Where its pixels are.
        crop_box: The micrograph proper.
        note: Why it is where it is in a review queue ("margin 0.03", "model says X").
        actor: Who set the label (a colleague's name on a shared library), "" when unknown.
    """

    image_id: int
    name: str
    label: str | None
    source: str | None
    review: str
    synthetic: bool
    sha256: str
    page: int
    path: Path
    crop_box: tuple[int, int, int, int] | None
    note: str = ""
    actor: str = ""


SOURCES = ("import", "expert", "local", "lmm", "synthetic")
FETCH_BATCH = 2000


@dataclass(frozen=True)
class BrowserQuery:
    """What the browser asks for (plain data for the worker)."""

    label: str | None = None
    source: str | None = None
    unlabelled: bool = False
    needs_review: bool = False
    order: str = "id"
    local_predictor: str = "knn"
    search: str = ""

    def browse_filter(self) -> BrowseFilter:
        """The store's filter for this query."""
        return BrowseFilter(self.label, self.source, self.unlabelled, self.needs_review, self.search)


@dataclass(frozen=True)
class BrowserPage:
    """One page of rows and where the next one starts (None: this was the last)."""

    rows: list[BrowserRow]
    cursor: BrowseCursor | None


def _browsable(store: Store) -> SqlStore:
    if not isinstance(store, SqlStore):
        raise LibraryError(f"the library {store.location} cannot be browsed page by page")
    return store


def _item_row(item: BrowseItem, order: str) -> BrowserRow:
    note = ""
    if order != "id" and item.top1 is not None and item.margin is not None:
        note = f"local: {item.top1} (margin {item.margin:.2f})"
        if order == "disagree" and item.model_label:
            note += f"; model: {item.model_label}" if item.model_label != item.top1 else "; model agrees"
    return _row(item.record, note)


def fetch_page(store: Store, query: BrowserQuery, after: BrowseCursor | None = None, limit: int = 500) -> BrowserPage:
    """One page of the browser's rows after ``after`` (in a worker: the store answers it)."""
    ensure_worker_thread("reading a library page")
    items, cursor = _browsable(store).browse_page(
        query.browse_filter(), order=query.order, local_predictor=query.local_predictor, after=after, limit=limit
    )
    return BrowserPage([_item_row(item, query.order) for item in items], cursor)


@dataclass(frozen=True)
class IdChunk:
    """The image ids of the next rows and where the chunk after starts (None: this was the last)."""

    ids: list[int]
    cursor: BrowseCursor | None


def fetch_id_chunk(store: Store, query: BrowserQuery, after: BrowseCursor | None, limit: int = 20_000) -> IdChunk:
    """The ids of the next ``limit`` rows of the query after ``after`` (no rows: cheap, 8 bytes a row)."""
    ensure_worker_thread("listing library ids")
    ids, cursor = _browsable(store).browse_ids(
        query.browse_filter(), order=query.order, local_predictor=query.local_predictor, after=after, limit=limit
    )
    return IdChunk(ids, cursor)


def fetch_ids(store: Store, query: BrowserQuery, ids: list[int]) -> list[BrowserRow]:
    """The rows of these images in the order given, with the query's notes (a page read again)."""
    ensure_worker_thread("reading a library page")
    items = _browsable(store).browse_items(ids, order=query.order, local_predictor=query.local_predictor)
    return [_item_row(item, query.order) for item in items]


def count_rows(store: Store, query: BrowserQuery) -> int:
    """How many rows the query lists (a review queue: the undecided images)."""
    ensure_worker_thread("counting library rows")
    return _browsable(store).browse_count(query.browse_filter(), order=query.order)


def _row(record: ImageRecord, note: str = "") -> BrowserRow:
    return BrowserRow(
        image_id=record.id,
        name=record.original_name,
        label=record.label,
        source=record.label_source,
        review=record.review,
        synthetic=record.synthetic,
        sha256=record.sha256,
        page=record.page,
        path=record.path,
        crop_box=record.crop_box,
        note=note,
        actor=record.label_actor or "",
    )


def fetch_rows(store: Store, query: BrowserQuery, token: CancelToken | None = None) -> Generator[Progress, None, list[BrowserRow]]:
    """The browser's rows for a query, in its order (a job: yields progress per batch).

    Review queues hold only images nobody has accepted or rejected. Images with a local prediction come first, ordered by its margin
    (smallest first: the most uncertain); ``disagree`` puts images whose latest model
    prediction differs from the local one before all others. Images without any
    prediction follow in library order.
    """
    flt = ImageFilter(
        label=query.label,
        label_source=query.source,
        unlabelled=True if query.unlabelled else None,
        review="pending" if query.needs_review else None,
    )
    total = store.count_images(flt)
    records: list[ImageRecord] = []
    offset = 0
    while True:
        batch = store.images(flt, limit=FETCH_BATCH, offset=offset)
        if not batch:
            break
        records.extend(batch)
        offset += len(batch)
        yield Progress(len(records), total, "reading the library")
    if query.order == "id":
        return [_row(r) for r in records]
    # A review queue holds what an expert has not decided yet: unlabelled or pending images.
    records = [r for r in records if r.review == "pending" or r.label is None]
    return review_queue(store, records, order=query.order, local_predictor=query.local_predictor)


def review_queue(
    store: Store, records: list[ImageRecord], *, order: str = "uncertain", local_predictor: str = "knn"
) -> list[BrowserRow]:
    """Order undecided images for review, with a note on each saying why it is where it is.

    Images with a local prediction come first, most uncertain first by
    :func:`~nmid_desktop.predict.ranking.uncertainty_order` (smallest margin, then highest
    entropy); with ``order="disagree"`` those whose latest model answer differs from the local
    prediction come before all others. Images without any prediction follow in library order.
    """
    from nmid_desktop.predict.ranking import Ranking, uncertainty_order

    local = store.latest_predictions(local_predictor)
    other = "logreg" if local_predictor == "knn" else "knn"
    fallback = store.latest_predictions(other)
    model = store.latest_predictions("lmm") if order == "disagree" else {}
    by_id = {r.id: r for r in records}
    rankings: dict[int, Ranking] = {}
    unranked: list[BrowserRow] = []
    for record in records:
        prediction = local.get(record.id) or fallback.get(record.id)
        if prediction is None or not prediction.ranking:
            unranked.append(_row(record))
            continue
        rankings[record.id] = Ranking(items=tuple((str(c), float(p)) for c, p in prediction.ranking))
    disagreeing: list[BrowserRow] = []
    rest: list[BrowserRow] = []
    for image_id in uncertainty_order(list(rankings.items())):
        ranking = rankings[image_id]
        note = f"local: {ranking.top1} (margin {ranking.margin:.2f})"
        answer = model.get(image_id)
        target = rest
        if answer is not None and answer.valid and answer.label:
            if answer.label != ranking.top1:
                target = disagreeing
                note += f"; model: {answer.label}"
            else:
                note += "; model agrees"
        target.append(_row(by_id[image_id], note))
    return disagreeing + rest + unranked
