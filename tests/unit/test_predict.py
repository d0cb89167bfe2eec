"""Local predictors and retrieval on toy embeddings: kNN vote, logistic probe, ranking, similar()."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nmid_desktop.core.errors import ConfigError
from nmid_desktop.index import Searcher
from nmid_desktop.predict.knn import KnnPredictor
from nmid_desktop.predict.probe import ProbePredictor
from nmid_desktop.predict.ranking import Ranking, uncertainty_order
from nmid_desktop.predict.retrieval import Demonstration, DemoPool, similar


def _toy(rng: np.random.Generator, per_class: int = 30, d: int = 16) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Three well-separated classes on the unit sphere; returns (vectors, labels, centres)."""
    centres = np.eye(d, dtype=np.float32)[:3]
    x, y = [], []
    for c, name in enumerate(["alpha", "beta", "gamma"]):
        pts = centres[c] + 0.3 * rng.normal(size=(per_class, d)).astype(np.float32)
        x.append(pts / np.linalg.norm(pts, axis=1, keepdims=True))
        y += [name] * per_class
    return np.concatenate(x), y, centres


def test_ranking_properties() -> None:
    r = Ranking.from_scores({"b": 0.2, "a": 0.7, "c": 0.1}, predictor="knn", demo_ids=[4, 5])
    assert r.labels == ["a", "b", "c"] and r.top1 == "a"
    assert r.confidence == pytest.approx(0.7) and r.margin == pytest.approx(0.5)
    assert r.entropy == pytest.approx(-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)))
    assert r.rank_of("c") == 3 and r.rank_of("zzz") is None
    record = r.to_prediction(9)
    assert record.image_id == 9 and record.label == "a" and record.demo_ids == [4, 5]
    assert record.ranking[0] == ("a", pytest.approx(0.7))
    with pytest.raises(ValueError, match="sum to 1"):
        Ranking.from_scores({"a": 0.5, "b": 0.2})
    sure = Ranking.from_scores({"a": 0.99, "b": 0.01})
    unsure = Ranking.from_scores({"a": 0.5, "b": 0.5})
    assert uncertainty_order([(1, sure), (2, unsure)]) == [2, 1]


def test_knn_probabilities_sum_to_one_and_rank_by_weighted_vote() -> None:
    knn = KnnPredictor(temperature=0.1, smoothing=0.0)
    demos = [
        Demonstration(1, "a", 0.95),
        Demonstration(2, "b", 0.90),
        Demonstration(3, "b", 0.89),
        Demonstration(4, "c", 0.10),
    ]
    r = knn.rank(demos, ["a", "b", "c", "d"])
    assert sum(p for _, p in r.items) == pytest.approx(1.0)
    assert r.labels[:3] == ["b", "a", "c"] and r.labels[-1] == "d"  # every class present
    w = np.exp(np.array([0.95, 0.90, 0.89, 0.10]) / 0.1)
    assert r.probability("a") == pytest.approx(w[0] / w.sum())
    assert r.probability("b") == pytest.approx((w[1] + w[2]) / w.sum())
    assert r.probability("d") == 0.0
    assert r.demo_ids == (1, 2, 3, 4)
    # A cold temperature trusts the single nearest neighbour.
    assert KnnPredictor(temperature=0.001).rank(demos, ["a", "b"]).top1 == "a"
    # Smoothing gives absent classes a small, non-zero share and keeps the sum at 1.
    smooth = KnnPredictor(smoothing=0.01).rank(demos, ["a", "b", "c", "d"])
    assert smooth.probability("d") == pytest.approx(0.01 / 4)
    assert sum(p for _, p in smooth.items) == pytest.approx(1.0)
    uniform = KnnPredictor().rank([], ["x", "y"])
    assert uniform.probability("x") == pytest.approx(0.5)


def test_knn_on_toy_clusters_predicts_the_right_class() -> None:
    rng = np.random.default_rng(0)
    x, y, centres = _toy(rng)
    searcher = Searcher(None, x.shape[1])
    searcher.add(np.arange(len(x)), x)
    pool = DemoPool(labels=dict(enumerate(y)))
    knn = KnnPredictor()
    for c, name in enumerate(["alpha", "beta", "gamma"]):
        demos = similar(centres[c], 5, searcher=searcher, pool=pool)
        assert knn.rank(demos, pool.classes).top1 == name


def test_probe_fits_ranks_and_refits_only_when_key_changes() -> None:
    rng = np.random.default_rng(1)
    x, y, centres = _toy(rng)
    probe = ProbePredictor()
    calls = []

    def data():
        calls.append(1)
        return x, y

    probe.ensure_fitted(("enc", 1), data)
    probe.ensure_fitted(("enc", 1), data)
    assert len(calls) == 1 and probe.fits == 1 and probe.key == ("enc", 1)
    rankings = probe.rank_many(centres)
    assert [r.top1 for r in rankings] == ["alpha", "beta", "gamma"]
    assert all(sum(p for _, p in r.items) == pytest.approx(1.0) for r in rankings)
    # The labels version moved (image 0 relabelled to a new class): the probe refits.
    y2 = ["delta"] + y[1:]
    probe.ensure_fitted(("enc", 2), lambda: (x, y2))
    assert probe.fits == 2 and "delta" in probe.classes
    assert probe.rank(x[5]).labels.__len__() == 4


def test_probe_with_one_class_is_certain() -> None:
    probe = ProbePredictor().fit(np.ones((3, 4), np.float32), ["only"] * 3)
    r = probe.rank(np.ones(4, np.float32))
    assert r.top1 == "only" and r.confidence == 1.0


def test_similar_strategies() -> None:
    rng = np.random.default_rng(2)
    x, y, centres = _toy(rng)
    searcher = Searcher(None, x.shape[1])
    searcher.add(np.arange(len(x)), x)
    pool = DemoPool(labels=dict(enumerate(y)))
    demos = similar(x[0], 4, searcher=searcher, pool=pool, exclude_ids=[0])
    assert 0 not in [d.image_id for d in demos] and len(demos) == 4
    sims = [d.similarity for d in demos]
    assert sims == sorted(sims, reverse=True)
    np.testing.assert_allclose(sims, [x[d.image_id] @ x[0] for d in demos], atol=1e-5)
    assert all(d.label == "alpha" for d in demos)

    a = similar(x[0], 10, "random", searcher=searcher, pool=pool, rng=7, exclude_ids=[0])
    b = similar(x[0], 10, "random", searcher=searcher, pool=pool, rng=7, exclude_ids=[0])
    assert [d.image_id for d in a] == [d.image_id for d in b]  # seeded
    assert len({d.label for d in a}) > 1  # random draws cross classes
    np.testing.assert_allclose([d.similarity for d in a], [x[d.image_id] @ x[0] for d in a], atol=1e-5)
    assert 0 not in [d.image_id for d in a]
    with pytest.raises(ConfigError, match="strategy"):
        similar(x[0], 3, "nearest", searcher=searcher, pool=pool)
    with pytest.raises(ConfigError, match="k must"):
        similar(x[0], 0, searcher=searcher, pool=pool)


def test_similar_only_returns_pool_members_with_current_labels() -> None:
    rng = np.random.default_rng(3)
    x, y, _ = _toy(rng)
    searcher = Searcher(None, x.shape[1])
    searcher.add(np.arange(len(x)), x)
    labels = dict(enumerate(y))
    labels[1] = "relabelled"
    del labels[2]  # rejected: no longer in the pool
    searcher.set_allowed(labels)
    demos = similar(x[0], len(x), searcher=searcher, pool=DemoPool(labels=labels))
    ids = {d.image_id: d.label for d in demos}
    assert ids[1] == "relabelled" and 2 not in ids
    rand = similar(x[0], len(x), "random", searcher=searcher, pool=DemoPool(labels=labels), rng=0)
    assert 2 not in {d.image_id for d in rand} and len(rand) == len(labels)
