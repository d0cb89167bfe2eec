"""The library browser pages from the store: scroll to the end, filters, sort, the queue (small pages)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from gui_helpers import TIMEOUT_MS
from PySide6.QtCore import Qt

from nmid_desktop.core.config import Settings
from nmid_desktop.core.store import PredictionRecord, open_library
from nmid_desktop.qt.context import AppContext
from nmid_desktop.qt.widgets.library_browser import LibraryBrowser
from nmid_desktop.qt.workers import JobManager
from nmid_desktop.workspace.browse import review_queue
from nmid_desktop.workspace.display import ThumbnailCache

CLASSES = ("fibres", "particles", "porous")
N = 300
PAGE = 20


@pytest.fixture(scope="module")
def paged_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 tiny images (no pixels worth decoding), a third labelled, half with a kNN prediction."""
    base = tmp_path_factory.mktemp("paged")
    rng = random.Random(5)
    with open_library(base / "library") as store:
        for i in range(N):
            path = base / f"img_{i:03d}.png"
            path.write_bytes(f"image {i}".encode())
            image_id, _ = store.add_image(path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), page=0,
                                          n_pages=1, width=8, height=8, dtype="uint8")
            if i % 3 == 0:
                store.set_label(image_id, CLASSES[i % 2], source="expert", review="accepted")
            if rng.random() < 0.5:
                raw = [rng.choice((1, 2, 3)) for _ in CLASSES]
                ranking = sorted(((c, r / sum(raw)) for c, r in zip(CLASSES, raw, strict=True)),
                                 key=lambda cp: (-cp[1], cp[0]))
                store.add_prediction(PredictionRecord(image_id=image_id, predictor="knn", label=ranking[0][0],
                                                      ranking=ranking, confidence=ranking[0][1]))
    return base / "library"


@pytest.fixture
def browser(qtbot, paged_library: Path, tmp_path: Path) -> Iterator[LibraryBrowser]:  # noqa: ANN001
    jobs = JobManager()
    ctx = AppContext(paged_library, Settings(), jobs, ThumbnailCache(tmp_path / "thumbs"))
    widget = LibraryBrowser(ctx, page_size=PAGE)
    widget.model._cached_pages = 4  # fewer pages in memory than the list has: pages are read again
    widget._set_classes(list(CLASSES))
    qtbot.addWidget(widget)
    widget.resize(900, 600)
    widget.show()
    qtbot.waitExposed(widget)
    yield widget
    widget.shutdown()
    assert jobs.shutdown(60)


def _scroll_to_end(qtbot, browser: LibraryBrowser) -> None:  # noqa: ANN001
    bar = browser.view.verticalScrollBar()
    model = browser.model
    for step in range(1, 11):
        bar.setValue(bar.maximum() * step // 10)
        qtbot.wait(20)
    qtbot.waitUntil(lambda: model.complete and model.row_data(model.rowCount() - 1) is not None, timeout=TIMEOUT_MS)


def test_scroll_to_the_end_and_back_reads_pages_again(qtbot, browser: LibraryBrowser, paged_library: Path) -> None:  # noqa: ANN001
    with open_library(paged_library) as store:
        expected = [r.id for r in store.images()]
    qtbot.waitUntil(lambda: browser.count_label.text() == f"{N} images", timeout=TIMEOUT_MS)
    _scroll_to_end(qtbot, browser)
    model = browser.model
    assert model.ids() == expected  # every row once, in library order
    assert len(model.rows()) <= 4 * PAGE  # only the pages painted lately are held
    assert model.row_data(0) is None  # the first page was dropped on the way down
    browser.view.verticalScrollBar().setValue(0)
    qtbot.waitUntil(lambda: model.row_data(0) is not None, timeout=TIMEOUT_MS)  # read again by its ids
    assert model.index(0).data(Qt.ItemDataRole.DisplayRole) in ("fibres ✓", "particles ✓")
    assert model.row_data(0).image_id == expected[0]


def test_filters_search_and_queue_order_come_from_the_store(qtbot, browser: LibraryBrowser, paged_library: Path) -> None:  # noqa: ANN001
    with open_library(paged_library) as store:
        records = store.images()
        undecided = [r for r in records if r.review == "pending" or r.label is None]
        queue = [row.image_id for row in review_queue(store, undecided, order="uncertain")]
    fibres = [r.id for r in records if r.label == "fibres"]
    qtbot.waitUntil(lambda: browser.count_label.text() == f"{N} images", timeout=TIMEOUT_MS)

    browser.class_combo.setCurrentIndex(browser.class_combo.findData("fibres"))
    qtbot.waitUntil(lambda: browser.count_label.text() == f"{len(fibres)} images", timeout=TIMEOUT_MS)
    _scroll_to_end(qtbot, browser)
    assert browser.model.ids() == fibres

    browser.class_combo.setCurrentIndex(0)
    browser.search_edit.setText("IMG_01")
    named = [r.id for r in records if "img_01" in r.original_name]
    qtbot.waitUntil(lambda: browser.model.complete and browser.model.ids() == named, timeout=TIMEOUT_MS)
    assert browser.count_label.text() == f"{len(named)} images"

    browser.search_edit.clear()
    browser.order_combo.setCurrentIndex(browser.order_combo.findData("uncertain"))
    qtbot.waitUntil(lambda: browser.count_label.text() == f"{len(queue)} images to review", timeout=TIMEOUT_MS)
    _scroll_to_end(qtbot, browser)
    assert browser.model.ids() == queue  # the store's order is uncertainty_order

    # Opening an image makes the listed order the queue.
    opened: list[tuple[list[int], int]] = []
    browser.ctx.open_queue_requested.connect(lambda ids, image_id: opened.append((ids, image_id)))
    last = browser.model.index(browser.model.rowCount() - 1)
    browser.view.scrollTo(last)
    browser._on_view_activated(last)
    assert opened == [(queue, queue[-1])]

    handle = browser.refresh()  # the public refresh lists the same rows again from the first page
    qtbot.waitUntil(lambda: not handle.running, timeout=TIMEOUT_MS)
    _scroll_to_end(qtbot, browser)
    assert browser.model.ids() == queue
