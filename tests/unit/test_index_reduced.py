"""PCA-reduced Annoy with exact re-rank: recall against full-width search, sidecar checks, swaps."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from nmid_desktop.core.errors import Cancelled
from nmid_desktop.core.jobs import CancelToken, run_job
from nmid_desktop.index import AnnoyIndex, Searcher, StaleIndexError, build_index
from nmid_desktop.index.annoy_index import check_index, sidecar_path
from nmid_desktop.index.reduced import (
    Pca,
    ReducedAnnoyIndex,
    build_reduced_index,
    open_index,
    pca_path,
    sidecar_kind,
    vectors_path,
)

D = 96


def _clustered(rng: np.random.Generator, n: int, d: int = D, n_clusters: int = 15, intrinsic: int = 8) -> np.ndarray:
    """Clusters that vary along a low-dimensional subspace each, like encoder embeddings."""
    centres = rng.normal(size=(n_clusters, d))
    bases = rng.normal(size=(n_clusters, intrinsic, d)) / np.sqrt(d)
    which = rng.integers(0, n_clusters, n)
    x = centres[which] + np.einsum("ni,nid->nd", rng.normal(size=(n, intrinsic)), bases[which]) * 2 + 0.05 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _build(path: Path, ids, vectors, **kw) -> ReducedAnnoyIndex:
    run_job(build_reduced_index(path, ids, vectors, encoder_key=kw.pop("encoder_key", "enc:abc"), labels_version=3,
                                reduced_dim=kw.pop("reduced_dim", 24), n_trees=kw.pop("n_trees", 20), **kw))
    return ReducedAnnoyIndex.open(path)


def test_pca_matches_the_svd_of_the_centred_data() -> None:
    rng = np.random.default_rng(0)
    x = _clustered(rng, 500)
    pca = Pca.fit(x, 10)
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    # Same subspace (components may differ in sign): |<u_i, v_i>| = 1.
    np.testing.assert_allclose(np.abs(np.sum(pca.components * vt[:10], axis=1)), 1, atol=1e-4)
    assert pca.explained == pytest.approx(float((s[:10] ** 2).sum() / (s**2).sum()), rel=1e-4)
    assert pca.project(x).shape == (500, 10)


def test_reduced_index_ranks_by_exact_cosine_with_high_recall(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = _clustered(rng, 3000)
    index = _build(tmp_path / "r.ann", np.arange(1000, 4000), vectors)
    assert index.meta.kind == "annoy-pca" and index.meta.dim == D and index.meta.reduced_dim == 24
    queries = _clustered(np.random.default_rng(1), 3100)[3000:]  # same clusters, not indexed
    result = check_index(index, vectors, queries=queries, k=10)
    assert result.recall >= 0.95
    ids, sims = index.search(queries[0], 10)
    exact = vectors[ids - 1000] @ queries[0]
    np.testing.assert_allclose(sims, exact, atol=2e-3)  # float16 copies of the full vectors
    assert np.all(np.diff(sims) <= 1e-7)  # most similar first
    np.testing.assert_allclose(index.vector(1005), vectors[5], atol=1e-3)
    index.close()


def test_reduced_recall_beats_pca_alone(tmp_path: Path) -> None:
    """The exact re-rank is what lifts recall: with no candidates beyond k it drops."""
    rng = np.random.default_rng(2)
    vectors = _clustered(rng, 3000)
    queries = _clustered(np.random.default_rng(2), 3100)[3000:]
    index = _build(tmp_path / "r.ann", np.arange(3000), vectors, reduced_dim=6)
    with_rerank = check_index(index, vectors, queries=queries).recall
    index.rerank = 10
    without = check_index(index, vectors, queries=queries).recall
    index.close()
    assert with_rerank > without


def test_sidecar_checks_catch_every_missing_or_truncated_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "r.ann"
    _build(path, np.arange(200), _clustered(rng, 200)).close()
    assert sidecar_kind(path) == "annoy-pca"
    with pytest.raises(StaleIndexError, match="encoder"):
        ReducedAnnoyIndex.open(path, encoder_key="other", dim=D)
    with pytest.raises(StaleIndexError):
        AnnoyIndex.open(path)  # an older reader sees an unknown sidecar: stale, rebuilt, never misread
    for victim in (vectors_path(path), pca_path(path), path):
        data = victim.read_bytes()
        victim.write_bytes(data[:-8])
        with pytest.raises(StaleIndexError, match="bytes"):
            open_index(path)
        victim.unlink()
        with pytest.raises(StaleIndexError, match="missing"):
            open_index(path)
        victim.write_bytes(data)
    assert isinstance(open_index(path, encoder_key="enc:abc", dim=D), ReducedAnnoyIndex)


def test_open_index_dispatches_on_the_sidecar(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    plain = tmp_path / "p.ann"
    run_job(build_index(plain, np.arange(50), _clustered(rng, 50), encoder_key="e", labels_version=0, n_trees=3))
    opened = open_index(plain)
    assert type(opened) is AnnoyIndex and sidecar_kind(plain) == "annoy"
    opened.close()
    with pytest.raises(StaleIndexError):
        ReducedAnnoyIndex.open(plain)


def test_cancelled_rebuild_keeps_the_old_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    path = tmp_path / "r.ann"
    old = _clustered(rng, 300)
    _build(path, np.arange(300), old).close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    token = CancelToken()
    reports = []

    def progress(report) -> None:
        reports.append(report)
        if len(reports) == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        run_job(build_reduced_index(path, np.arange(500), _clustered(rng, 500), encoder_key="enc:abc",
                                    labels_version=4, reduced_dim=24), progress, token)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert len(ReducedAnnoyIndex.open(path)) == 300


def test_searcher_buffers_swaps_and_reopens_a_reduced_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    path = tmp_path / "r.ann"
    vectors = _clustered(rng, 600)
    searcher = Searcher(_build(path, np.arange(500), vectors[:500]))
    # labelled after the build: exact buffer, found by the next query
    searcher.add(np.arange(500, 600), vectors[500:])
    ids, sims = searcher.search(vectors[550], 3)
    assert ids[0] == 550 and sims[0] == pytest.approx(1, abs=1e-5)
    assert searcher.similarity(vectors[10], [10])[0] == pytest.approx(1, abs=2e-3)

    # background rebuild with all 600, swapped in under the searcher's lock while queries run
    stop = threading.Event()
    errors: list[BaseException] = []

    def query_loop() -> None:
        while not stop.is_set():
            try:
                searcher.search(vectors[int(rng.integers(0, 600))], 5)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    worker = threading.Thread(target=query_loop)
    worker.start()
    try:
        run_job(build_reduced_index(path, np.arange(600), vectors, encoder_key="enc:abc", labels_version=5, reduced_dim=24,
                                    install=lambda move: searcher.replace_index(move, lambda: ReducedAnnoyIndex.open(path))))
    finally:
        stop.set()
        worker.join()
    assert errors == []
    assert len(searcher.index) == 600 and len(searcher.buffer) == 0
    assert searcher.search(vectors[550], 1)[0][0] == 550
    searcher.close()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()) and sidecar_path(path).exists()
