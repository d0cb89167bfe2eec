""""Unlike anything in your library": a novelty score for each prediction.

A query's neighbours tell how familiar it is only relative to how close the library's
own images are to theirs: cosine 0.70 is far in a library whose images match each other
at 0.91, and near in one where 0.65 is typical. So the score compares the query's
nearest-neighbour similarity with the leave-one-out nearest-neighbour similarities of
the library's images, **within the predicted class** (classes differ a lot in how
tight they are; a loose class would otherwise hide novelties next to a tight one). The
score is the share of that class's images whose own nearest neighbour is closer than
the query's: an empirical p-value, in the spirit of conformal novelty detection
(Bates et al., "Testing for outliers with conformal p-values", Ann. Statist. 2023,
https://arxiv.org/abs/2104.08279), with the kNN-distance score of Sun et al., "Out-of-
Distribution Detection with Deep Nearest Neighbors", ICML 2022,
https://arxiv.org/abs/2204.06507. Past :data:`DEFAULT_THRESHOLD` the window and the CLI
say "unlike your library: nearest 0.70, typical 0.91" instead of a confident label.

Because the score is a rank among the library's own images, a held-out image of a known
class exceeds threshold ``t`` with probability about ``1 - t``: the false-alarm rate is
set by the threshold, whatever the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLD = 0.98
DEFAULT_NEIGHBOURS = 1
_MIN_CLASS = 20  # classes smaller than this use the whole library's reference


@dataclass(frozen=True)
class Novelty:
    """How unlike the library one query is.

    Attributes:
        score: In [0, 1]: share of the reference images whose own neighbours are closer
            than the query's (1 = farther than every one).
        nearest: The query's neighbour similarity (cosine; mean of the m nearest).
        typical: Median of the reference images' own neighbour similarities.
        reference: What it was compared with: a class name, or ``library``.
        threshold: Score above which the query counts as novel.
    """

    score: float
    nearest: float
    typical: float
    reference: str
    threshold: float = DEFAULT_THRESHOLD

    @property
    def novel(self) -> bool:
        """True when the window should show the badge instead of a confident label."""
        return self.score > self.threshold

    @property
    def text(self) -> str:
        """What the badge says, e.g. ``unlike your library: nearest 0.70, typical 0.91``."""
        head = "unlike your library" if self.novel else "like your library"
        return f"{head}: nearest {self.nearest:.2f}, typical {self.typical:.2f}"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"score": round(self.score, 4), "nearest": round(self.nearest, 4), "typical": round(self.typical, 4),
                "reference": self.reference, "threshold": self.threshold, "novel": self.novel}


def neighbour_similarity(sims: np.ndarray, m: int = DEFAULT_NEIGHBOURS) -> np.ndarray:
    """Mean of the ``m`` largest similarities per row. Shape (N, K) -> (N,)."""
    s = np.asarray(sims, dtype=np.float64)
    if s.ndim == 1:
        s = s.reshape(1, -1)
    m = max(1, min(int(m), s.shape[1]))
    top = -np.partition(-s, m - 1, axis=1)[:, :m]
    return np.asarray(top.mean(axis=1))


class NoveltyModel:
    """The library's reference distribution of neighbour similarities.

    Args:
        vectors: The labelled library's L2-normalised embeddings, shape (N, D).
        labels: N class names.
        m: Neighbours averaged into the similarity.
        threshold: Score above which a query is novel.
    """

    def __init__(
        self, vectors: np.ndarray, labels: Sequence[str], *, m: int = DEFAULT_NEIGHBOURS,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        if not 0 < threshold < 1:
            raise ValueError("threshold must be in (0, 1)")
        x = np.asarray(vectors, dtype=np.float32)
        self.m = int(m)
        self.threshold = float(threshold)
        self.labels = [str(label) for label in labels]
        own = np.empty(len(x))
        for start in range(0, len(x), 1024):
            sims = x[start:start + 1024] @ x.T
            rows = np.arange(len(sims))
            sims[rows, start + rows] = -np.inf  # leave itself out
            own[start:start + len(sims)] = neighbour_similarity(sims, self.m) if len(x) > 1 else 1.0
        self._all = np.sort(own)
        y = np.asarray(self.labels)
        self._by_class = {c: np.sort(own[y == c]) for c in set(self.labels) if int((y == c).sum()) >= _MIN_CLASS}

    def _reference(self, label: str | None) -> tuple[str, np.ndarray]:
        if label is not None and label in self._by_class:
            return label, self._by_class[label]
        return "library", self._all

    def score(self, similarities: Sequence[float] | np.ndarray, label: str | None = None) -> Novelty:
        """The novelty of one query from its neighbours' similarities (any order, any K >= 1).

        Args:
            similarities: Cosine similarities of the query's nearest library images.
            label: The predicted class (its images are the reference); None: the whole library.
        """
        sims = np.asarray(similarities, dtype=np.float64).reshape(-1)
        reference, ref = self._reference(label)
        if len(sims) == 0 or len(ref) == 0:
            return Novelty(1.0, 0.0, float(np.median(ref)) if len(ref) else 0.0, reference, self.threshold)
        q = float(neighbour_similarity(sims, self.m)[0])
        closer = len(ref) - int(np.searchsorted(ref, q, side="right"))  # reference images closer than q
        return Novelty(closer / len(ref), q, float(np.median(ref)), reference, self.threshold)

    def scores(
        self, query_vectors: np.ndarray, library_vectors: np.ndarray, predicted: Sequence[str | None]
    ) -> np.ndarray:
        """Scores of many queries against the library vectors this model was built from. Shape (M,)."""
        q = np.asarray(query_vectors, dtype=np.float32)
        lib = np.asarray(library_vectors, dtype=np.float32)
        out = np.empty(len(q))
        for start in range(0, len(q), 1024):
            sims = q[start:start + 1024] @ lib.T
            m = max(1, min(self.m, sims.shape[1]))
            top = -np.partition(-sims, m - 1, axis=1)[:, :m]
            for r in range(len(sims)):
                out[start + r] = self.score(top[r], predicted[start + r]).score
        return out
