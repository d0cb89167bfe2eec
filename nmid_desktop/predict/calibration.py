"""Calibrated confidence for the local predictors, fitted on the library itself.

A percentage is only worth showing when, of the images shown at 80 %, about 80 % are
right. We measure that with the expected calibration error (ECE) over 15 equal-width
bins of top-1 confidence (Guo et al., "On Calibration of Modern Neural Networks",
ICML 2017, https://arxiv.org/abs/1706.04599) and fix it by **temperature scaling** of
out-of-fold probabilities: ``p_c ∝ p_c ** (1 / T)`` with one ``T`` fitted by minimising
the negative log-likelihood (the same paper). Why temperature rather than
scikit-learn's ``CalibratedClassifierCV`` or isotonic regression:

- it has one parameter, so it is stable on the small libraries a lab starts with
  (isotonic needs hundreds of points per bin and is piecewise flat, which makes ties
  in the review queues);
- it is monotone within each row, so it never changes the predicted class or the
  ranking order: calibrating cannot cost accuracy;
- it applies to the kNN vote as well as the probe (``CalibratedClassifierCV`` wraps an
  estimator, and the kNN vote is not one).

Out-of-fold probabilities: the kNN vote of every labelled image with itself left out
(exact leave-one-out, since the vote has nothing to fit), and the probe by stratified
k-fold. They are computed from cached embeddings; a library of thousands of images
calibrates in a second for kNN and a few seconds for the probe. :class:`CalibrationCache`
keys each fit by a digest of the labelled set, so it is refitted exactly when labels change.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nmid_desktop.core.errors import LabelError
from nmid_desktop.predict.knn import KnnPredictor
from nmid_desktop.predict.ranking import Ranking

ECE_BINS = 15
INNER_FOLDS = 5
_T_BOUNDS = (0.25, 20.0)  # a floor: a small library that is all right OOF must not turn every vote into 100 %


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: confidences in ``[lo, hi)``."""

    lo: float
    hi: float
    count: int
    confidence: float  # mean top-1 confidence in the bin (0 when empty)
    accuracy: float  # share of correct top-1 predictions in the bin (0 when empty)


def reliability_bins(
    confidences: Sequence[float], correct: Sequence[bool], n_bins: int = ECE_BINS
) -> list[ReliabilityBin]:
    """Equal-width bins of top-1 confidence with their accuracy (the last bin includes 1.0).

    Args:
        confidences: Top-1 probabilities, shape (N,).
        correct: Whether each top-1 prediction was right, shape (N,).
        n_bins: Number of bins.
    """
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    if len(conf) != len(ok):
        raise ValueError("one correctness flag per confidence")
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    which = np.clip((conf * n_bins).astype(np.int64), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        members = which == b
        n = int(members.sum())
        out.append(ReliabilityBin(
            lo=b / n_bins, hi=(b + 1) / n_bins, count=n,
            confidence=float(conf[members].mean()) if n else 0.0,
            accuracy=float(ok[members].mean()) if n else 0.0,
        ))
    return out


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean of ``|accuracy - confidence|`` over equal-width bins."""
    bins = reliability_bins(confidences, correct, n_bins)
    total = sum(b.count for b in bins)
    if total == 0:
        return 0.0
    return float(sum(b.count * abs(b.accuracy - b.confidence) for b in bins) / total)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``p ** (1 / T)`` renormalised per row. Shape (N, C) -> (N, C)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    logits = np.log(p) / float(temperature)
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, targets: Sequence[int] | np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of the true classes.

    Args:
        probabilities: Out-of-fold probabilities, shape (N, C).
        targets: Index of each image's true class, shape (N,).

    Returns:
        T in [0.25, 20] (1.0 when there is nothing to fit).
    """
    from scipy.optimize import minimize_scalar

    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)
    if p.ndim != 2 or len(p) != len(y) or len(p) == 0 or p.shape[1] < 2:
        return 1.0
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-np.log(apply_temperature(p, math.exp(log_t))[rows, y] + 1e-12).mean())

    lo, hi = (math.log(b) for b in _T_BOUNDS)
    found = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-3})
    return float(math.exp(found.x))


def knn_oof_probabilities(
    vectors: np.ndarray, labels: Sequence[str], classes: Sequence[str], k: int, knn: KnnPredictor | None = None
) -> np.ndarray:
    """Leave-one-out kNN vote of every labelled image (itself excluded). Shape (N, C).

    Args:
        vectors: L2-normalised embeddings, shape (N, D).
        labels: N class names.
        classes: Column order, length C.
        k: Neighbours per vote.
    """
    knn = knn or KnnPredictor()
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    out = np.empty((n, len(classes)))
    if n == 0:
        return out
    kk = max(1, min(int(k), n - 1))
    for start in range(0, n, 1024):  # blocks keep the similarity matrix small on big libraries
        sims = x[start:start + 1024] @ x.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf  # leave itself out
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk] if n > 1 else np.zeros((len(sims), 0), np.int64)
        for r in range(len(sims)):
            nb = top[r]
            out[start + r] = knn.probabilities([labels[j] for j in nb], sims[r, nb], classes)
    return out


def probe_oof_probabilities(
    vectors: np.ndarray, labels: Sequence[str], classes: Sequence[str], *, folds: int = INNER_FOLDS, seed: int = 0
) -> np.ndarray:
    """Stratified k-fold probabilities of the logistic probe. Shape (N, C).

    Classes with fewer images than folds are handled by using fewer folds (at least 2).
    """
    from sklearn.model_selection import StratifiedKFold

    from nmid_desktop.predict.probe import ProbePredictor

    x = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(labels)
    _, counts = np.unique(y, return_counts=True)
    n_folds = int(min(folds, counts.min())) if len(counts) else 0
    if n_folds < 2:
        raise LabelError("calibrating the probe needs at least two images of every class")
    position = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(x), len(classes)))
    for train, test in StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, y):
        names, probs = ProbePredictor(seed=seed).fit(x[train], list(y[train])).predict_proba(x[test])
        for j, name in enumerate(names):
            out[test, position[name]] = probs[:, j]
    return out


def oof_probabilities(
    predictor: str, vectors: np.ndarray, labels: Sequence[str], classes: Sequence[str], *, k: int = 5, seed: int = 0
) -> np.ndarray:
    """Out-of-fold probabilities of a local predictor (``knn`` or ``logreg``). Shape (N, C)."""
    if predictor == "knn":
        return knn_oof_probabilities(vectors, labels, classes, k)
    if predictor == "logreg":
        return probe_oof_probabilities(vectors, labels, classes, seed=seed)
    raise ValueError(f"no out-of-fold probabilities for predictor {predictor!r}")


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature with what it achieved on the out-of-fold predictions.

    Attributes:
        key: Digest of what it was fitted on (see :func:`labelled_set_key`).
        predictor: ``knn`` or ``logreg``.
        k: Neighbours of the kNN vote it applies to (0 for the probe).
        temperature: T of ``p ** (1 / T)``; above 1 softens over-confident predictions.
        n: Out-of-fold predictions it was fitted on.
        ece_before: ECE of the raw out-of-fold probabilities.
        ece_after: ECE after scaling (in-sample: an honest figure comes from ``nmid evaluate``).
        classes: Column order of the out-of-fold probabilities.
        oof: The out-of-fold probabilities, shape (N, C), raw (for label-error search).
        ids: Image ids of the rows of ``oof``, shape (N,).
    """

    key: str
    predictor: str
    k: int
    temperature: float
    n: int
    ece_before: float
    ece_after: float
    classes: tuple[str, ...]
    oof: np.ndarray
    ids: np.ndarray

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities. Shape (N, C) -> (N, C)."""
        return apply_temperature(probabilities, self.temperature)


def labelled_set_key(
    encoder_key: str, ids: Sequence[int] | np.ndarray, labels: Sequence[str], predictor: str, k: int
) -> str:
    """A digest of everything a calibration depends on: encoder, predictor, K, every (id, label)."""
    h = hashlib.sha256(f"{encoder_key}\0{predictor}\0{k}".encode())
    for i, label in sorted(zip((int(i) for i in ids), labels, strict=True)):
        h.update(f"\0{i}\0{label}".encode())
    return h.hexdigest()


def fit_calibration(
    predictor: str, ids: Sequence[int] | np.ndarray, vectors: np.ndarray, labels: Sequence[str], *,
    encoder_key: str = "", k: int = 5, seed: int = 0,
) -> Calibration:
    """Out-of-fold probabilities, then the temperature that calibrates them.

    Raises:
        LabelError: Fewer than two classes, or (probe) a class with a single image.
    """
    labels = [str(label) for label in labels]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise LabelError("calibration needs at least two classes")
    oof = oof_probabilities(predictor, vectors, labels, classes, k=k, seed=seed)
    position = {c: i for i, c in enumerate(classes)}
    y = np.array([position[label] for label in labels])
    t = fit_temperature(oof, y)
    scaled = apply_temperature(oof, t)
    kk = int(k) if predictor == "knn" else 0
    return Calibration(
        key=labelled_set_key(encoder_key, ids, labels, predictor, kk),
        predictor=predictor, k=kk, temperature=t, n=len(y),
        ece_before=expected_calibration_error(oof.max(axis=1), oof.argmax(axis=1) == y),
        ece_after=expected_calibration_error(scaled.max(axis=1), scaled.argmax(axis=1) == y),
        classes=tuple(classes), oof=oof, ids=np.asarray(ids, dtype=np.int64),
    )


class CalibrationCache:
    """Calibrations keyed by the labelled set they were fitted on; thread-safe.

    A lookup with the same encoder, predictor, K and (id, label) pairs returns the cached
    fit; any label change gives a new key and a refit. Only the newest few are kept.
    """

    def __init__(self, size: int = 4) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Calibration] = {}
        self._size = int(size)
        self.fits = 0

    def get(
        self, predictor: str, ids: Sequence[int] | np.ndarray, vectors: np.ndarray, labels: Sequence[str], *,
        encoder_key: str = "", k: int = 5, seed: int = 0,
    ) -> Calibration:
        """The calibration for this labelled set, fitted now if not cached."""
        kk = int(k) if predictor == "knn" else 0
        key = labelled_set_key(encoder_key, ids, [str(x) for x in labels], predictor, kk)
        with self._lock:
            if key in self._items:
                return self._items[key]
        cal = fit_calibration(predictor, ids, vectors, labels, encoder_key=encoder_key, k=k, seed=seed)
        with self._lock:
            self._items[key] = cal
            self.fits += 1
            while len(self._items) > self._size:
                self._items.pop(next(iter(self._items)))
        return cal


def calibrate_ranking(ranking: Ranking, calibration: Calibration | None) -> Ranking:
    """The ranking with temperature-scaled probabilities (unchanged without a calibration)."""
    if calibration is None:
        return ranking
    labels = [c for c, _ in ranking.items]
    probs = calibration.apply(np.array([[p for _, p in ranking.items]]))[0]
    scores = dict(zip(labels, probs.tolist(), strict=True))
    return Ranking.from_scores(scores, predictor=ranking.predictor, demo_ids=ranking.demo_ids)
