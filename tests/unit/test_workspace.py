"""The application layer without Qt: every job iterated as a generator, with a cancel token."""

from __future__ import annotations

from pathlib import Path

import pytest

from nmid_desktop.core.config import Settings
from nmid_desktop.core.demo import generate_demo
from nmid_desktop.core.errors import Cancelled
from nmid_desktop.core.jobs import CancelToken, run_job
from nmid_desktop.core.store import open_library
from nmid_desktop.workspace.batch import BatchRow, batch_job
from nmid_desktop.workspace.browse import BrowserQuery, fetch_rows
from nmid_desktop.workspace.engine import Engine, build_demo, classifier_changed
from nmid_desktop.workspace.export import export_job
from nmid_desktop.workspace.library import fill_demo, resolve_library


@pytest.fixture(scope="module")
def encoder():
    import torch

    from nmid_desktop.ml.encoders import load_encoder

    torch.set_num_threads(1)
    return load_encoder("efficientnet-lite0-imagenet", device="cpu")


@pytest.fixture
def demo_library(tmp_path: Path) -> Path:
    with open_library(tmp_path / "lib") as store:
        report = run_job(fill_demo(store, Settings(), per_class=3, size=96))
        assert report is not None and report.imported == 15
    return tmp_path / "lib"


def test_fill_demo_only_fills_an_empty_library_and_cancels_cleanly(tmp_path: Path, demo_library: Path) -> None:
    with open_library(demo_library) as store:
        assert run_job(fill_demo(store, Settings(), per_class=3, size=96)) is None  # not empty: nothing done
    token = CancelToken()
    token.cancel()
    with open_library(tmp_path / "other") as store:
        with pytest.raises(Cancelled):
            run_job(fill_demo(store, Settings(), per_class=3, size=96), token=token)
        assert store.count_images() == 0


def test_resolve_library_keeps_urls_as_text(tmp_path: Path) -> None:
    settings = Settings()
    assert resolve_library(tmp_path, settings) == tmp_path
    assert resolve_library("postgresql://ann@lab/nmid", settings) == "postgresql://ann@lab/nmid"
    settings.library = "postgresql://ann@lab/nmid"
    assert resolve_library(None, settings) == "postgresql://ann@lab/nmid"


def test_classifier_changes_with_encoder_or_crop() -> None:
    a, b = Settings(), Settings()
    assert not classifier_changed(a, b)
    b.crop_data_bar = not a.crop_data_bar
    assert classifier_changed(a, b)


def test_engine_query_one_search_and_demo_build(demo_library: Path, encoder, tmp_path: Path) -> None:
    engine = Engine(demo_library, Settings(), encoder=encoder)
    try:
        run_job(engine.prepare(CancelToken()))
        image_id = engine.store.images()[0].id
        searches = []
        original = engine.classifier.similar

        def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            searches.append(1)
            return original(*args, **kwargs)

        engine.classifier.similar = counting  # count the classifier's searches during one query
        result = run_job(engine.query(image_id, CancelToken()))
        assert result.image_id == image_id and result.tiles and result.ranking
        assert len(searches) == 1  # the kNN vote reuses the demonstrations just retrieved
        assert run_job(build_demo(engine, CancelToken())) is None  # the library is not empty
    finally:
        engine.close()


def test_engine_query_makes_two_store_calls(demo_library: Path, encoder) -> None:
    # On a shared library every store call is a round trip: a query of an embedded image makes
    # two (benchmarks/shared_library.py times exactly these), where it once made fourteen.
    engine = Engine(demo_library, Settings(), encoder=encoder)
    try:
        run_job(engine.prepare(CancelToken()))
        image_id = engine.store.images()[0].id
        run_job(engine.query(image_id, CancelToken()))  # embeds and caches it
        store, made, depth = engine.store, [], [0]
        for name in [n for n in dir(type(store)) if not n.startswith("_")]:
            method = getattr(store, name)
            if not callable(method):
                continue

            def counted(*args, _method=method, _name=name, **kwargs):  # noqa: ANN002, ANN003, ANN202
                if depth[0] == 0:
                    made.append(_name)
                depth[0] += 1
                try:
                    return _method(*args, **kwargs)
                finally:
                    depth[0] -= 1

            setattr(store, name, counted)
        result = run_job(engine.query(image_id, CancelToken()))
        assert made == ["query_start", "query_finish"]
        assert result.record == engine.store.get_image(image_id) and result.tiles and result.ranking
        assert all(t.name for t in result.tiles)  # the tiles' records came with query_finish
        latest = engine.store.predictions(image_id)[0]
        assert latest.predictor == Settings().local_predictor and list(latest.demo_ids) == list(result.demo_ids)
    finally:
        engine.close()


def test_engine_query_takes_a_label_set_elsewhere_at_once(demo_library: Path, encoder) -> None:
    # The query reads the labels version once, with its image; a newer one re-reads the labels.
    engine = Engine(demo_library, Settings(), encoder=encoder)
    try:
        run_job(engine.prepare(CancelToken()))
        image_id = engine.store.images()[0].id
        first = run_job(engine.query(image_id, CancelToken()))
        nearest = first.tiles[0].image_id
        with open_library(demo_library, user="colleague") as other:  # another window, another PC
            other.set_label(nearest, "relabelled elsewhere", source="expert")
        again = run_job(engine.query(image_id, CancelToken()))
        assert (again.tiles[0].image_id, again.tiles[0].label) == (nearest, "relabelled elsewhere")
    finally:
        engine.close()


def test_batch_job_cancel_keeps_what_was_done(demo_library: Path, encoder, tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    run_job(generate_demo(folder, per_class=2, seed=5, size=96))
    token = CancelToken()
    rows: list[BatchRow] = []
    job = batch_job(demo_library, Settings(), folder, token, encoder=encoder)

    def first_row(progress) -> bool:  # noqa: ANN001
        if isinstance(progress.data, BatchRow):
            rows.append(progress.data)
            return True
        return False

    with pytest.raises(Cancelled):
        for _ in _drive_until(job, token, first_row):
            pass
    assert rows  # one result reached the driver before the cancel
    with open_library(demo_library) as store:
        assert rows[0].image_id in store.latest_predictions("knn")  # its prediction is stored
        assert store.get_image(rows[0].image_id).label is None  # cancelled before the label step


def _drive_until(job, token: CancelToken, seen):  # noqa: ANN001, ANN202
    """Iterate a job, cancelling it once ``seen(progress)`` is true, as the window's worker would."""
    try:
        while True:
            if token.cancelled:
                job.close()
                raise Cancelled()
            progress = next(job)
            if seen(progress):
                token.cancel()
            yield progress
    except StopIteration:
        return


def test_export_and_browse_jobs(demo_library: Path, tmp_path: Path) -> None:
    report = run_job(export_job(demo_library, tmp_path / "out", (0.6, 0.2, 0.2), 0, False, "copy"))
    assert (tmp_path / "out").is_dir() and report is not None
    with open_library(demo_library) as store:
        rows = run_job(fetch_rows(store, BrowserQuery()))
        assert len(rows) == 15
        queue = run_job(fetch_rows(store, BrowserQuery(order="uncertain")))
        assert queue == []  # everything is labelled and accepted: nothing to review


def test_engine_reports_and_reassigns_the_librarys_class_keys(demo_library: Path, encoder) -> None:
    engine = Engine(demo_library, Settings(), encoder=encoder)
    try:
        keys = engine.status().class_keys
        assert sorted(keys.values()) == [1, 2, 3, 4, 5]
        holder = next(name for name, key in keys.items() if key == 1)
        other = next(name for name, key in keys.items() if key == 5)
        done = engine.set_class_key(other, 1)
        assert done == f"Keys: {other!r} 1, {holder!r} 5"
        assert engine.status().class_keys == {**keys, other: 1, holder: 5}
        assert engine.set_class_key(other, 1) == f"Class {other!r} already has that key"
    finally:
        engine.close()
