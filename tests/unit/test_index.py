"""Annoy index on disk: cosine conversion, recall against exact search, sidecar checks, safe builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nmid_desktop.core.errors import Cancelled
from nmid_desktop.core.jobs import CancelToken, run_job
from nmid_desktop.index import AnnoyIndex, StaleIndexError, build_index, cosine_from_angular, index_path
from nmid_desktop.index.annoy_index import sidecar_path


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(rng: np.random.Generator, n: int, d: int, n_clusters: int = 20, spread: float = 0.5) -> np.ndarray:
    centres = _unit(rng, n_clusters, d)
    x = centres[rng.integers(0, n_clusters, n)] + spread * _unit(rng, n, d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _build(path: Path, ids, vectors, **kw) -> AnnoyIndex:
    run_job(build_index(path, ids, vectors, encoder_key=kw.pop("encoder_key", "enc:abc"), labels_version=3, **kw))
    return AnnoyIndex.open(path)


def test_cosine_from_angular_matches_numpy_cosine(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 50, 16)
    index = _build(tmp_path / "a.ann", np.arange(100, 150), vectors, n_trees=5)
    query = _unit(rng, 1, 16)[0]
    ids, sims = index.search(query, 50, search_k=10_000)
    exact = vectors[ids - 100] @ query
    np.testing.assert_allclose(sims, exact, atol=1e-5)
    # The textbook identity on its own: orthogonal vectors are at distance sqrt(2), opposite ones at 2.
    assert cosine_from_angular(np.sqrt(2.0)) == pytest.approx(0.0)
    assert cosine_from_angular(2.0) == pytest.approx(-1.0)
    assert cosine_from_angular(0.0) == pytest.approx(1.0)
    index.close()


def test_recall_at_10_against_exact_search(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = _clustered(rng, 3000, 64)
    index = _build(tmp_path / "r.ann", np.arange(3000), vectors)
    queries = _clustered(rng, 100, 64)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(index.search(q, 10)[0].tolist()) & set(e.tolist())) / 10 for q, e in zip(queries, exact)])
    assert recall >= 0.95
    index.close()


def test_sidecar_records_the_build(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = index_path(tmp_path, "micrograph-vit:sha256/abc")
    assert path.parent == tmp_path / "index" and path.suffix == ".ann"
    assert ":" not in path.name and "/" not in path.name
    _build(path, [7, 3, 9], _unit(rng, 3, 8), encoder_key="micrograph-vit:sha256/abc", n_trees=4).close()
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["item_ids"] == [7, 3, 9]
    assert meta["encoder_key"] == "micrograph-vit:sha256/abc"
    assert meta["dim"] == 8 and meta["n_trees"] == 4 and meta["labels_version"] == 3
    assert meta["annoy_version"] and meta["built_at"]


def test_stale_index_is_detected(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "s.ann"
    _build(path, np.arange(20), _unit(rng, 20, 8), n_trees=3).close()
    AnnoyIndex.open(path, encoder_key="enc:abc", dim=8).close()
    with pytest.raises(StaleIndexError, match="encoder"):
        AnnoyIndex.open(path, encoder_key="enc:other", dim=8)
    with pytest.raises(StaleIndexError, match="16-d"):
        AnnoyIndex.open(path, encoder_key="enc:abc", dim=16)
    # A truncated file (size no longer what the sidecar says) is refused before Annoy maps it.
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StaleIndexError, match="bytes"):
        AnnoyIndex.open(path)
    path.unlink()
    with pytest.raises(StaleIndexError, match="missing"):
        AnnoyIndex.open(path)
    sidecar_path(path).write_text("{not json")
    with pytest.raises(StaleIndexError, match="unreadable"):
        AnnoyIndex.open(path)


def test_cancelled_build_leaves_previous_index_intact(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    path = tmp_path / "c.ann"
    _build(path, np.arange(10), _unit(rng, 10, 8), n_trees=3).close()
    before = path.read_bytes()
    token = CancelToken()

    def cancel_after_first_chunk(progress) -> None:
        if progress.done > 0:
            token.cancel()

    job = build_index(path, np.arange(2000), _unit(rng, 2000, 8), encoder_key="enc:abc", labels_version=9)
    with pytest.raises(Cancelled):
        run_job(job, cancel_after_first_chunk, token)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp file removed
    index = AnnoyIndex.open(path, encoder_key="enc:abc", dim=8)
    assert len(index) == 10 and index.meta.labels_version == 3
    index.close()


def test_cancelled_first_build_leaves_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    path = tmp_path / "index" / "n.ann"
    job = build_index(path, np.arange(1000), _unit(rng, 1000, 8), encoder_key="e", labels_version=0)
    next(job)
    next(job)
    job.close()
    assert list(path.parent.iterdir()) == []
    with pytest.raises(StaleIndexError):
        AnnoyIndex.open(path)


def test_rebuild_replaces_the_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    path = tmp_path / "x.ann"
    first = _build(path, np.arange(5), _unit(rng, 5, 8), n_trees=2)
    first.close()  # Windows cannot replace a mapped file; the searcher closes before swapping
    second = _build(path, np.arange(100, 130), _unit(rng, 30, 8), n_trees=2)
    assert len(second) == 30 and set(second.ids.tolist()) == set(range(100, 130))
    second.close()


def test_build_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique"):
        run_job(build_index(tmp_path / "u.ann", [1, 1], np.ones((2, 4), np.float32), encoder_key="e", labels_version=0))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        run_job(build_index(tmp_path / "u.ann", [1, 2, 3], np.ones((2, 4), np.float32), encoder_key="e", labels_version=0))


def test_check_index_reports_recall_and_latency(tmp_path: Path) -> None:
    from nmid_desktop.index.annoy_index import check_index

    rng = np.random.default_rng(7)
    vectors = _clustered(rng, 500, 32)
    index = _build(tmp_path / "k.ann", np.arange(1000, 1500), vectors, n_trees=1)
    # Leave-one-out queries: each query is an indexed item that must not count as its own hit.
    exhaustive = check_index(index, vectors, n_queries=30, search_k=10**6)
    assert exhaustive.recall == 1.0 and exhaustive.k == 10 and exhaustive.n_queries == 30
    assert set(exhaustive.latency_ms) == {50, 95, 99} and exhaustive.cpu_ms[50] > 0
    # One tree inspected barely: recall drops, and the check notices.
    rough = check_index(index, vectors, queries=_clustered(rng, 30, 32), search_k=1)
    assert rough.recall < exhaustive.recall
    index.close()
