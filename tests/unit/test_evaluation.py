"""Hard split, k-fold and metrics, checked against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, top_k_accuracy_score

from nmid_desktop.core.errors import NmidError
from nmid_desktop.evaluation.metrics import compute_metrics, top_k_accuracy
from nmid_desktop.evaluation.splits import hard_test_mask, hardness_scores, stratified_folds
from nmid_desktop.predict.ranking import Ranking


def _blobs(
    rng: np.random.Generator, sizes: dict[str, int], d: int = 40, first_spread: float = 3.0
) -> tuple[np.ndarray, list[str]]:
    x, y = [], []
    for c, (name, n) in enumerate(sizes.items()):
        centre = np.zeros(d)
        centre[c] = 6.0
        # One class far more spread out than the others, as NEU's most varied class.
        spread = first_spread if c == 0 else 1.0
        x.append(centre + spread * rng.normal(size=(n, d)))
        y += [name] * n
    return np.concatenate(x), y


def test_hard_split_takes_ten_percent_of_each_class_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    sizes = {"a": 100, "b": 60, "c": 41, "d": 1}
    x, y = _blobs(rng, sizes)
    ids = np.arange(1000, 1000 + len(y))
    h1 = hardness_scores(x, y, n_components=10, seed=3)
    h2 = hardness_scores(x, y, n_components=10, seed=3)
    np.testing.assert_array_equal(h1, h2)
    mask = hard_test_mask(h1, y, ids, test_fraction=0.1)
    labels = np.asarray(y)
    assert {c: int(mask[labels == c].sum()) for c in sizes} == {"a": 10, "b": 6, "c": 4, "d": 0}
    np.testing.assert_array_equal(mask, hard_test_mask(h2, y, ids, test_fraction=0.1))
    # Within each class the test images are the hardest ones.
    for c in ("a", "b", "c"):
        inside = labels == c
        assert h1[inside & mask].min() >= h1[inside & ~mask].max()
    # Over the whole set, the hardest 10 % would be almost all from the spread-out class "a";
    # per class, every class is represented: the reason for the per-class rule.
    raw = np.linalg.norm(x - x.mean(axis=0), axis=1)
    top = np.argsort(-raw)[: int(0.1 * len(y))]
    assert np.mean(labels[top] == "a") > 0.8


def test_hardness_prefers_outliers_of_their_class() -> None:
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, {"a": 50, "b": 50}, d=10, first_spread=1.0)
    x[0] = x[60]  # image 0 of class a looks exactly like an image of class b
    h = hardness_scores(x, y, n_components=5, seed=0)
    assert h[0] == pytest.approx(1.0, abs=0.05)


def test_hard_split_needs_two_classes() -> None:
    with pytest.raises(NmidError, match="two classes"):
        hardness_scores(np.zeros((5, 3)), ["a"] * 5)


def test_stratified_folds_cover_every_image_once() -> None:
    y = ["a"] * 20 + ["b"] * 10
    masks = stratified_folds(y, 5, seed=0)
    assert len(masks) == 5
    np.testing.assert_array_equal(np.sum(masks, axis=0), np.ones(30))
    assert all(m[:20].sum() == 4 and m[20:].sum() == 2 for m in masks)
    assert all((a == b).all() for a, b in zip(masks, stratified_folds(y, 5, seed=0)))
    with pytest.raises(NmidError, match="too few"):
        stratified_folds(["a"] * 3 + ["b"] * 10, 5)


def _random_rankings(rng: np.random.Generator, classes: list[str], n: int) -> list[Ranking]:
    out = []
    for _ in range(n):
        p = rng.dirichlet(np.ones(len(classes)))
        out.append(Ranking.from_scores(dict(zip(classes, p))))
    return out


def test_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    classes = ["crazing", "inclusion", "patches", "scratches", "pitted"]
    rankings = _random_rankings(rng, classes, 300)
    # Make it better than chance so precision and recall differ between classes.
    true = [r.top1 if rng.random() < 0.6 else classes[rng.integers(len(classes))] for r in rankings]
    m = compute_metrics(true, rankings, classes)
    pred = [r.top1 for r in rankings]
    p, r, f, s = precision_recall_fscore_support(true, pred, labels=classes, zero_division=0)
    np.testing.assert_allclose(m.precision, p)
    np.testing.assert_allclose(m.recall, r)
    np.testing.assert_allclose(m.f1, f)
    np.testing.assert_array_equal(m.support, s)
    np.testing.assert_array_equal(m.confusion, confusion_matrix(true, pred, labels=classes))
    assert m.macro_f1 == pytest.approx(f1_score(true, pred, average="macro", zero_division=0))
    scores = np.array([[rk.probability(c) for c in classes] for rk in rankings])
    y_idx = [classes.index(t) for t in true]
    for k in (1, 2, 3):
        expected = top_k_accuracy_score(y_idx, scores, k=k, labels=range(len(classes)))
        assert m.top_k[k] == pytest.approx(expected)
    assert m.top_k[5] == 1.0
    data = m.to_dict()
    assert data["confusion"] == m.confusion.tolist() and set(data["per_class"]) == set(classes)


def test_metrics_with_a_class_never_predicted() -> None:
    rankings = [Ranking.from_scores({"a": 0.9, "b": 0.1})] * 3
    m = compute_metrics(["a", "a", "b"], rankings, ["a", "b", "c"])
    assert m.precision.tolist() == [pytest.approx(2 / 3), 0.0, 0.0]
    assert m.recall.tolist() == [1.0, 0.0, 0.0]
    # sklearn's macro average over the labels present in truth or predictions: a and b.
    assert m.macro_f1 == pytest.approx(f1_score(["a", "a", "b"], ["a", "a", "a"], average="macro", zero_division=0))
    assert top_k_accuracy(["a", "b"], rankings[:2], 2) == 1.0
