"""The library browser's rows: filters, review-queue orders, paging (a job, without Qt)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from nmid_desktop.core.jobs import CancelToken, Progress
from nmid_desktop.core.store import ImageFilter, ImageRecord, Store

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
