"""The browser's keyset pages answered by the store, on both backends (core/store/sql_browse.py)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from library_fixture import Library

from nmid_desktop.core.errors import LibraryError
from nmid_desktop.core.store import PredictionRecord, Store
from nmid_desktop.core.store.sql_browse import BrowseCursor
from nmid_desktop.workspace.browse import BrowserQuery, count_rows, fetch_ids, fetch_page, review_queue

CLASSES = ("fibres", "particles", "porous")


def _add(store: Store, folder: Path, n: int, prefix: str = "img") -> list[int]:
    ids = []
    for i in range(n):
        path = folder / f"{prefix}{i}.png"
        path.write_bytes(f"{prefix}-{i}".encode())
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        image_id, _ = store.add_image(path, sha256=sha, page=0, n_pages=1, width=4, height=4, dtype="uint8")
        ids.append(image_id)
    return ids


def _ranking(rng: random.Random) -> list[tuple[str, float]]:
    # Coarse probabilities so that many margins tie and the tie-breaks decide.
    raw = [rng.choice((1, 2, 3, 4)) for _ in CLASSES]
    total = sum(raw)
    items = sorted(((c, r / total) for c, r in zip(CLASSES, raw, strict=True)), key=lambda cp: (-cp[1], cp[0]))
    return items


def _fill(store: Store, folder: Path, n: int = 120, seed: int = 3) -> list[int]:
    rng = random.Random(seed)
    ids = _add(store, folder, n)
    for image_id in ids:
        kind = rng.random()
        if kind < 0.3:
            store.set_label(image_id, rng.choice(CLASSES), source="expert", review="accepted")
        elif kind < 0.45:
            store.set_label(image_id, rng.choice(CLASSES), source="local", review="pending")
        for predictor in ("knn", "logreg", "lmm"):
            if rng.random() < 0.6:
                ranking = _ranking(rng) if rng.random() > 0.05 else []
                store.add_prediction(PredictionRecord(
                    image_id=image_id, predictor=predictor, label=ranking[0][0] if ranking else None,
                    ranking=ranking, confidence=ranking[0][1] if ranking else None,
                    valid=rng.random() > 0.2,
                ))
    return ids


def _prediction(image_id: int, predictor: str, ranking: list[tuple[str, float]]) -> PredictionRecord:
    return PredictionRecord(image_id=image_id, predictor=predictor, label=ranking[0][0], ranking=ranking,
                            confidence=ranking[0][1])


def _all_pages(store: Store, query: BrowserQuery, limit: int) -> list[int]:
    ids: list[int] = []
    cursor: BrowseCursor | None = None
    while True:
        page = fetch_page(store, query, cursor, limit)
        ids += [r.image_id for r in page.rows]
        if page.cursor is None:
            return ids
        cursor = page.cursor


@pytest.mark.parametrize("order", ["uncertain", "disagree"])
def test_store_queue_order_is_uncertainty_order(library: Library, tmp_path: Path, order: str) -> None:
    store = library.open()
    _fill(store, tmp_path)
    for local in ("knn", "logreg"):
        query = BrowserQuery(order=order, local_predictor=local)
        undecided = [r for r in store.images() if r.review == "pending" or r.label is None]
        expected = review_queue(store, undecided, order=order, local_predictor=local)
        got = []
        cursor: BrowseCursor | None = None
        while True:
            page = fetch_page(store, query, cursor, 7)
            got += page.rows
            if page.cursor is None:
                break
            cursor = page.cursor
        assert [r.image_id for r in got] == [r.image_id for r in expected]
        assert [r.note for r in got] == [r.note for r in expected]
        assert count_rows(store, query) == len(expected)
        # A page read again by its ids gives the same rows and notes.
        again = fetch_ids(store, query, [r.image_id for r in got[10:17]])
        assert again == got[10:17]


def test_filters_and_counts_answered_by_the_store(library: Library, tmp_path: Path) -> None:
    store = library.open()
    _fill(store, tmp_path)
    records = store.images()
    cases = {
        BrowserQuery(): records,
        BrowserQuery(label="fibres"): [r for r in records if r.label == "fibres"],
        BrowserQuery(source="local"): [r for r in records if r.label_source == "local"],
        BrowserQuery(unlabelled=True): [r for r in records if r.label is None],
        BrowserQuery(needs_review=True): [r for r in records if r.review == "pending"],
        BrowserQuery(search="IMG1"): [r for r in records if "img1" in r.original_name],
        BrowserQuery(search="%"): [],
    }
    for query, expected in cases.items():
        assert _all_pages(store, query, 9) == [r.id for r in expected], query
        assert count_rows(store, query) == len(expected), query
    with pytest.raises(LibraryError, match="unknown browser order"):
        fetch_page(store, BrowserQuery(order="random"))
    with pytest.raises(LibraryError, match="local predictor"):
        fetch_page(store, BrowserQuery(order="uncertain", local_predictor="lmm"))


@pytest.mark.parametrize("order", ["id", "uncertain"])
def test_keyset_pages_have_no_duplicates_or_gaps_under_concurrent_inserts(
    library: Library, tmp_path: Path, order: str
) -> None:
    store = library.open()
    before = set(_fill(store, tmp_path, n=60))
    colleague = library.open(user="colleague")  # another connection, writing between our pages
    query = BrowserQuery(order=order)
    seen: list[int] = []
    cursor: BrowseCursor | None = None
    added: list[int] = []
    step = 0
    while True:
        page = fetch_page(store, query, cursor, 8)
        seen += [r.image_id for r in page.rows]
        if page.cursor is None:
            break
        cursor = page.cursor
        added += _add(colleague, tmp_path, 3, prefix=f"new{step}-")
        step += 1
    assert len(seen) == len(set(seen)), "a row was listed twice"
    expected_before = before if order == "id" else {
        r.id for r in store.images() if r.id in before and (r.review == "pending" or r.label is None)
    }
    assert expected_before <= set(seen), "a row that was there all along was skipped"
    assert set(seen) <= before | set(added)
    if order == "id":
        assert seen == sorted(seen)


def test_queue_keys_follow_new_predictions(library: Library, tmp_path: Path) -> None:
    store = library.open()
    ids = _add(store, tmp_path, 3)
    query = BrowserQuery(order="uncertain")
    assert _all_pages(store, query, 10) == ids  # no predictions: library order
    sure = [("fibres", 0.9), ("porous", 0.1)]
    unsure = [("porous", 0.55), ("fibres", 0.45)]
    store.add_prediction(_prediction(ids[2], "knn", unsure))
    store.add_prediction(_prediction(ids[1], "knn", sure))
    assert _all_pages(store, query, 10) == [ids[2], ids[1], ids[0]]
    # A newer prediction replaces the key; an older fallback one never beats the queue's own.
    store.add_prediction(_prediction(ids[2], "knn", sure))
    store.add_prediction(_prediction(ids[0], "logreg", unsure))
    assert _all_pages(store, query, 10) == [ids[0], ids[1], ids[2]]
    disagree = BrowserQuery(order="disagree")
    store.add_prediction(_prediction(ids[1], "lmm", [("porous", 1.0)]))
    rows = fetch_page(store, disagree, None, 10).rows
    assert [r.image_id for r in rows] == [ids[1], ids[0], ids[2]]
    assert rows[0].note == "local: fibres (margin 0.80); model: porous"
