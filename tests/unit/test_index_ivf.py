"""The inverted-file index (faiss IVF, int8 codes, float16 re-rank): recall, sidecar checks, size choice, swaps."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from nmid_desktop.core.errors import Cancelled
from nmid_desktop.core.jobs import CancelToken, Progress, run_job
from nmid_desktop.index import AnnoyIndex, Searcher, StaleIndexError
from nmid_desktop.index.annoy_index import check_index, sidecar_path
from nmid_desktop.index.reduced import ReducedAnnoyIndex, vectors_path
from nmid_desktop.index.searcher import NO_FAISS, build_for_size, open_index

pytest.importorskip("faiss")

from nmid_desktop.index.ivf import IvfIndex, IvfMeta, build_ivf_index, default_nlist, is_ivf_sidecar  # noqa: E402

D = 96


def _near_duplicates(rng: np.random.Generator, n: int, n_sources: int = 60, noise: float = 0.03) -> np.ndarray:
    """Noisy copies of a few sources, the benchmark's hard case: copies of a source are near-equidistant."""
    sources = rng.normal(size=(n_sources, D))
    sources /= np.linalg.norm(sources, axis=1, keepdims=True)
    x = sources[rng.integers(0, n_sources, n)] + noise * rng.normal(size=(n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _build(path: Path, ids, vectors, **kw) -> IvfIndex:
    run_job(build_ivf_index(path, ids, vectors, encoder_key=kw.pop("encoder_key", "enc:abc"), labels_version=3, **kw))
    return IvfIndex.open(path)


def test_default_nlist_grows_with_the_square_root() -> None:
    assert default_nlist(10) == 16 and default_nlist(1_000_000) == 1024 and default_nlist(10**9) == 4096


def test_ivf_finds_the_exact_top_10_among_near_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = _near_duplicates(rng, 4000)
    index = _build(tmp_path / "i.ann", np.arange(1000, 5000), vectors, nlist=32)
    assert index.meta.kind == "faiss-ivf-sq8" and index.meta.nlist == 32 and index.meta.dim == D
    queries = _near_duplicates(np.random.default_rng(1), 4100)[4000:]  # same sources, not indexed
    index.nprobe = 4
    result = check_index(index, vectors, queries=queries, k=10)
    assert result.recall >= 0.95
    ids, sims = index.search(queries[0], 10)
    np.testing.assert_allclose(sims, vectors[ids - 1000] @ queries[0], atol=2e-3)  # float16 re-rank: exact order
    assert np.all(np.diff(sims) <= 1e-7)
    np.testing.assert_allclose(index.vector(1005), vectors[5], atol=1e-3)
    index.close()
    with pytest.raises(Exception, match="closed"):
        index.search(queries[0], 3)


def test_the_exact_rerank_is_what_lifts_recall_past_the_int8_codes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vectors = _near_duplicates(rng, 4000, n_sources=20, noise=0.02)
    queries = _near_duplicates(np.random.default_rng(2), 4100, n_sources=20, noise=0.02)[4000:]
    index = _build(tmp_path / "i.ann", np.arange(4000), vectors, nlist=16)
    index.nprobe = 16  # every list: only the scoring differs
    with_rerank = check_index(index, vectors, queries=queries).recall
    index.rerank = 0
    int8_only = check_index(index, vectors, queries=queries).recall
    index.close()
    assert with_rerank >= 0.98 and int8_only < with_rerank - 0.02, (with_rerank, int8_only)


def test_sidecar_checks_catch_a_missing_or_truncated_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "i.ann"
    _build(path, np.arange(300), _near_duplicates(rng, 300), nlist=8).close()
    assert is_ivf_sidecar(path)
    with pytest.raises(StaleIndexError, match="encoder"):
        IvfIndex.open(path, encoder_key="other", dim=D)
    with pytest.raises(StaleIndexError):
        AnnoyIndex.open(path)  # an older reader sees an unknown sidecar: stale, rebuilt, never misread
    with pytest.raises(StaleIndexError):
        ReducedAnnoyIndex.open(path)
    for victim in (vectors_path(path), path):
        data = victim.read_bytes()
        victim.write_bytes(data[:-8])
        with pytest.raises(StaleIndexError, match="bytes"):
            open_index(path)
        victim.unlink()
        with pytest.raises(StaleIndexError, match="missing"):
            open_index(path)
        victim.write_bytes(data)
    side = sidecar_path(path).read_text()
    sidecar_path(path).write_text(side[: len(side) // 2])
    with pytest.raises(StaleIndexError, match="unreadable"):
        open_index(path)
    sidecar_path(path).write_text(side)
    good = path.read_bytes()
    path.write_bytes(b"\0" * len(good))  # right size, garbage inside
    with pytest.raises(StaleIndexError, match="corrupt"):
        open_index(path)
    path.write_bytes(good)
    assert isinstance(open_index(path, encoder_key="enc:abc", dim=D), IvfIndex)


def test_an_ivf_index_without_faiss_is_stale_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "i.ann"
    _build(path, np.arange(200), _near_duplicates(np.random.default_rng(4), 200), nlist=8).close()
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` fails as if it were not installed
    with pytest.raises(StaleIndexError, match="nmid-desktop\\[large\\]"):
        open_index(path)


def test_build_for_size_picks_the_kind_by_size_and_falls_back_without_faiss(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    vectors = _near_duplicates(rng, 400)
    ids = np.arange(400)
    common = {"encoder_key": "e", "labels_version": 0}
    run_job(build_for_size(tmp_path / "small.ann", ids, vectors, large_from=1000, **common))
    assert type(open_index(tmp_path / "small.ann")) is AnnoyIndex
    run_job(build_for_size(tmp_path / "large.ann", ids, vectors, large_from=100, **common))
    large = open_index(tmp_path / "large.ann")
    assert isinstance(large, IvfIndex) and check_index(large, vectors, k=10).recall >= 0.95
    large.close()
    monkeypatch.setitem(sys.modules, "faiss", None)
    messages: list[str] = []
    run_job(build_for_size(tmp_path / "fallback.ann", ids, vectors, large_from=100, **common),
            lambda p: messages.append(p.message if isinstance(p, Progress) else ""))
    assert messages[0] == NO_FAISS and "pip install" in NO_FAISS
    assert isinstance(open_index(tmp_path / "fallback.ann"), ReducedAnnoyIndex)


def test_cancelled_rebuild_keeps_the_old_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    path = tmp_path / "i.ann"
    _build(path, np.arange(300), _near_duplicates(rng, 300), nlist=8).close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    token = CancelToken()
    reports: list[object] = []

    def progress(report: object) -> None:
        reports.append(report)
        if len(reports) == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        run_job(build_ivf_index(path, np.arange(500), _near_duplicates(rng, 500), encoder_key="enc:abc",
                                labels_version=4, nlist=8), progress, token)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert len(IvfIndex.open(path)) == 300


def test_searcher_buffers_swaps_and_reopens_an_ivf_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    path = tmp_path / "i.ann"
    vectors = _near_duplicates(rng, 600)
    searcher = Searcher(_build(path, np.arange(500), vectors[:500], nlist=8))
    searcher.add(np.arange(500, 600), vectors[500:])  # labelled after the build: exact buffer
    ids, sims = searcher.search(vectors[550], 3)
    assert ids[0] == 550 and sims[0] == pytest.approx(1, abs=1e-5)
    assert searcher.similarity(vectors[10], [10])[0] == pytest.approx(1, abs=2e-3)
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
    try:  # background rebuild with all 600, swapped in under the searcher's lock while queries run
        run_job(build_ivf_index(path, np.arange(600), vectors, encoder_key="enc:abc", labels_version=5, nlist=8,
                                install=lambda move: searcher.replace_index(move, lambda: IvfIndex.open(path))))
    finally:
        stop.set()
        worker.join()
    assert errors == []
    assert isinstance(searcher.index, IvfIndex) and len(searcher.index) == 600 and len(searcher.buffer) == 0
    assert searcher.search(vectors[550], 1)[0][0] == 550
    assert IvfMeta.read(sidecar_path(path)).labels_version == 5
    searcher.close()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
