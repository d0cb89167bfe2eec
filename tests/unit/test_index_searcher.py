"""Exact buffer and searcher: items added after the build, filtering, merging, drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nmid_desktop.core.jobs import run_job
from nmid_desktop.index import AnnoyIndex, ExactBuffer, Searcher, build_index


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def built(tmp_path: Path) -> tuple[AnnoyIndex, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 200, 16)
    run_job(build_index(tmp_path / "i.ann", np.arange(200), vectors, encoder_key="e", labels_version=1, n_trees=10))
    index = AnnoyIndex.open(tmp_path / "i.ann")
    yield index, vectors
    index.close()


def test_buffer_search_is_exact_and_replaces_ids() -> None:
    rng = np.random.default_rng(1)
    buf = ExactBuffer(8)
    vectors = _unit(rng, 30, 8)
    buf.add(np.arange(30), vectors)
    query = _unit(rng, 1, 8)[0]
    ids, sims = buf.search(query, 5)
    expected = np.argsort(-(vectors @ query))[:5]
    assert ids.tolist() == expected.tolist()
    np.testing.assert_allclose(sims, vectors[expected] @ query, atol=1e-6)
    buf.add([3], query[None, :])  # id 3 now sits exactly on the query
    assert len(buf) == 30
    assert buf.search(query, 1)[0].tolist() == [3]
    assert buf.search(query, 3, allowed={5, 6})[0].tolist() in ([5, 6], [6, 5])
    assert buf.remove([3, 999]) == 1 and 3 not in buf and len(buf) == 29


def test_buffer_rejects_wrong_dimension() -> None:
    with pytest.raises(ValueError, match="8-d"):
        ExactBuffer(8).add([1], np.ones((1, 4), np.float32))


def test_item_added_after_build_is_returned_by_the_next_query(built) -> None:
    index, vectors = built
    searcher = Searcher(index)
    searcher.set_allowed(range(201))
    rng = np.random.default_rng(2)
    new_vector = _unit(rng, 1, 16)[0]
    before = searcher.search(new_vector, 3)[0].tolist()
    assert 200 not in before
    searcher.add([200], new_vector[None, :])  # the expert just accepted image 200
    ids, sims = searcher.search(new_vector, 3)
    assert ids[0] == 200 and sims[0] == pytest.approx(1.0, abs=1e-5)
    # The rest of the ranking is still the index's, merged by cosine.
    assert ids[1:].tolist() == before[:2]
    assert np.all(np.diff(sims) <= 1e-7)


def test_rejected_item_disappears_and_query_self_is_excluded(built) -> None:
    index, vectors = built
    searcher = Searcher(index)
    query = vectors[10]
    searcher.set_allowed(range(200))
    assert searcher.search(query, 1)[0].tolist() == [10]
    assert 10 not in searcher.search(query, 5, exclude={10})[0].tolist()
    searcher.set_allowed(set(range(200)) - {10})  # image 10 was rejected since the build
    ids, _ = searcher.search(query, 5)
    assert 10 not in ids.tolist() and len(ids) == 5
    assert searcher.drift == 1


def test_filtering_many_items_still_returns_k(built) -> None:
    index, vectors = built
    searcher = Searcher(index)
    survivors = set(range(0, 200, 10))  # 180 of 200 indexed images no longer labelled
    searcher.set_allowed(survivors)
    ids, _ = searcher.search(vectors[3], 10)
    assert len(ids) == 10 and set(ids.tolist()) <= survivors


def test_needs_rebuild_past_threshold(built) -> None:
    index, _ = built
    searcher = Searcher(index, rebuild_fraction=0.05, rebuild_items=500)
    searcher.set_allowed(range(300))
    assert not searcher.needs_rebuild
    rng = np.random.default_rng(3)
    searcher.add(np.arange(200, 210), _unit(rng, 10, 16))
    assert searcher.drift == 10 and not searcher.needs_rebuild  # exactly 5 % of 200: not yet
    searcher.add([210], _unit(rng, 1, 16))
    assert searcher.drift == 11 and searcher.needs_rebuild
    assert not Searcher(None, 16).needs_rebuild
    empty = Searcher(None, 16)
    empty.add([1], _unit(rng, 1, 16))
    assert empty.needs_rebuild  # no index yet but something to index


def test_swap_index_moves_buffered_items_out(tmp_path: Path, built) -> None:
    index, vectors = built
    searcher = Searcher(index)
    rng = np.random.default_rng(4)
    extra = _unit(rng, 5, 16)
    searcher.add(np.arange(200, 205), extra)
    all_vectors = np.concatenate([vectors, extra])
    run_job(build_index(tmp_path / "j.ann", np.arange(205), all_vectors, encoder_key="e", labels_version=2))
    old = searcher.swap_index(AnnoyIndex.open(tmp_path / "j.ann"))
    assert old is index
    assert len(searcher.buffer) == 0 and searcher.drift == 0
    assert searcher.search(extra[2], 1)[0].tolist() == [202]
    searcher.index.close()


def test_similarity_and_known(built) -> None:
    index, vectors = built
    searcher = Searcher(index)
    rng = np.random.default_rng(5)
    searcher.add([500], _unit(rng, 1, 16))
    q = vectors[0]
    sims = searcher.similarity(q, [1, 500])
    np.testing.assert_allclose(sims, [vectors[1] @ q, searcher.vector(500) @ q], atol=1e-5)
    assert searcher.known([1, 500, 777]).tolist() == [True, True, False]
    assert searcher.missing([1, 777]) == [777]
    with pytest.raises(ValueError, match="dimensions"):
        searcher.search(np.ones(3, np.float32), 2)
