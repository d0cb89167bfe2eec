"""What to label next: unlabelled images ordered by how much a label would help.

Margin sampling (the smallest gap between the two most probable classes first; Scheffer,
Decomain and Wrobel, "Active Hidden Markov Models for Information Extraction", IDA 2001)
is the strongest simple uncertainty rule in large comparisons of active learning
(e.g. Zhan et al., "A Comparative Survey of Deep Active Learning", 2022,
https://arxiv.org/abs/2203.13450). Alone it puts near-copies of one confusing image at
the top, so we add diversity the way maximal-marginal-relevance selection does: walking
down the margin order, an image is taken only if it is not a near-copy of one already
taken, where "near-copy" means more similar than the pool's own typical
nearest-neighbour similarity; the images passed over follow, in margin order, so the
result is always a full ordering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nmid_desktop.predict.knn import KnnPredictor
from nmid_desktop.predict.novelty import neighbour_similarity

DEFAULT_K = 5
DIVERSE_TOP = 200  # diversity is enforced among this many of the first picks (the rest keep margin order)


@dataclass(frozen=True)
class Candidate:
    """An unlabelled image in the labelling queue.

    Attributes:
        image_id: Library id.
        predicted: The kNN vote's class.
        margin: Probability gap between the two best classes (small = uncertain).
        name: Original file name (filled in by the command).
    """

    image_id: int
    predicted: str
    margin: float
    name: str = ""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (the fields of ``nmid review next --json``)."""
        return {"id": self.image_id, "name": self.name, "predicted": self.predicted, "margin": round(self.margin, 4)}


def knn_margins(
    queries: np.ndarray, library: np.ndarray, labels: Sequence[str], *, k: int = DEFAULT_K
) -> tuple[list[str], np.ndarray]:
    """The kNN vote's class and margin for each query (exact search).

    Args:
        queries: Shape (M, D), L2-normalised.
        library: Labelled embeddings, shape (N, D).
        labels: N labels.

    Returns:
        ``(predicted classes (M,), margins (M,))``.
    """
    knn = KnnPredictor()
    classes = sorted(set(labels))
    q = np.asarray(queries, dtype=np.float32)
    lib = np.asarray(library, dtype=np.float32)
    kk = max(1, min(int(k), len(lib)))
    predicted: list[str] = []
    margins = np.empty(len(q))
    for start in range(0, len(q), 1024):
        sims = q[start:start + 1024] @ lib.T
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        for r in range(len(sims)):
            nb = top[r]
            probs = knn.probabilities([labels[j] for j in nb], sims[r, nb], classes)
            best = np.sort(probs)[::-1]
            predicted.append(classes[int(np.argmax(probs))])
            margins[start + r] = best[0] - (best[1] if len(best) > 1 else 0.0)
    return predicted, margins


def redundancy_threshold(vectors: np.ndarray) -> float:
    """The pool's median nearest-neighbour cosine: images closer than this count as near-copies."""
    x = np.asarray(vectors, dtype=np.float32)
    if len(x) < 2:
        return 1.0
    own = np.empty(len(x))
    for start in range(0, len(x), 1024):
        sims = x[start:start + 1024] @ x.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf
        own[start:start + len(sims)] = neighbour_similarity(sims, 1)
    return float(np.median(own))


def diverse_order(
    margins: np.ndarray, vectors: np.ndarray, *, redundancy: float | None = None, top: int = DIVERSE_TOP
) -> np.ndarray:
    """Positions in labelling order: margin first, skipping near-copies of what is already taken.

    Args:
        margins: Shape (M,), small = uncertain.
        vectors: Shape (M, D), L2-normalised.
        redundancy: Cosine above which an image is a near-copy (default: :func:`redundancy_threshold`).
        top: How many diverse picks to make before the rest follow in margin order.

    Returns:
        A permutation of ``range(M)``, shape (M,).
    """
    x = np.asarray(vectors, dtype=np.float32)
    order = np.argsort(np.asarray(margins, dtype=np.float64), kind="stable")
    if len(order) < 2:
        return order
    limit = redundancy_threshold(x) if redundancy is None else float(redundancy)
    taken: list[int] = []
    passed: list[int] = []
    for pos in order:
        if len(taken) >= top:
            passed.append(int(pos))
            continue
        if taken and float(np.max(x[taken] @ x[pos])) > limit:
            passed.append(int(pos))
        else:
            taken.append(int(pos))
    return np.array(taken + passed, dtype=np.int64)  # passed images keep their margin order


def next_to_label(
    ids: Sequence[int] | np.ndarray,
    vectors: np.ndarray,
    library: np.ndarray,
    labels: Sequence[str],
    *,
    k: int = DEFAULT_K,
    top: int = DIVERSE_TOP,
) -> list[Candidate]:
    """Unlabelled images, the one whose label helps most first.

    Args:
        ids: Unlabelled image ids, shape (M,).
        vectors: Their embeddings, shape (M, D).
        library: Labelled embeddings, shape (N, D).
        labels: N labels.
        k: Neighbours of the kNN vote.
        top: Diverse picks before plain margin order.
    """
    if len(ids) == 0:
        return []
    predicted, margins = knn_margins(vectors, library, labels, k=k)
    order = diverse_order(margins, vectors, top=top)
    return [Candidate(int(ids[p]), predicted[p], float(margins[p])) for p in order]
