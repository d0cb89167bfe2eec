"""Similarity-weighted k-nearest-neighbour vote over the retrieved demonstrations.

Each demonstration votes for its label with weight ``exp(s / T)`` (``s``: cosine
to the query), the weighted kNN classifier of
- [0] Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
  Discrimination", CVPR 2018, https://arxiv.org/abs/1805.01978 (T = 0.07), used
  again for the kNN evaluation of DINO (Caron et al., ICCV 2021,
  https://arxiv.org/abs/2104.14294).
The votes are normalised to probabilities and mixed with a small uniform share so
that every class of the library appears in the ranking with a non-zero
probability (needed for entropy-ordered review queues).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from nmid_desktop.predict.ranking import Ranking
from nmid_desktop.predict.retrieval import Demonstration

DEFAULT_TEMPERATURE = 0.07
DEFAULT_SMOOTHING = 0.01


class KnnPredictor:
    """Turns demonstrations into a full ranking of classes.

    Stateless and thread-safe.

    Args:
        temperature: T of the ``exp(s / T)`` weights; smaller trusts the nearest more.
        smoothing: Share of probability spread uniformly over all classes (0 disables).
    """

    name = "knn"

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, smoothing: float = DEFAULT_SMOOTHING) -> None:
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        if not 0 <= smoothing < 1:
            raise ValueError("smoothing must be in [0, 1)")
        self.temperature = float(temperature)
        self.smoothing = float(smoothing)

    def probabilities(self, labels: Sequence[str], similarities: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """Class probabilities from neighbour labels and similarities.

        Args:
            labels: Neighbour labels, length K.
            similarities: Cosine similarities, shape (K,).
            classes: All classes, length C; every neighbour label must be among them.

        Returns:
            Shape (C,), non-negative, summing to 1. Uniform when there are no neighbours.
        """
        n_classes = len(classes)
        if n_classes == 0:
            raise ValueError("no classes to rank")
        sims = np.asarray(similarities, dtype=np.float64).reshape(-1)
        if len(sims) == 0:
            return np.full(n_classes, 1.0 / n_classes)
        position = {c: i for i, c in enumerate(classes)}
        # Shifting by the maximum leaves the normalised weights unchanged and avoids overflow.
        weights = np.exp((sims - sims.max()) / self.temperature)
        votes = np.zeros(n_classes)
        np.add.at(votes, [position[label] for label in labels], weights)
        votes /= votes.sum()
        return (1.0 - self.smoothing) * votes + self.smoothing / n_classes

    def rank(self, demonstrations: Sequence[Demonstration], classes: Iterable[str]) -> Ranking:
        """The ranking for one query.

        Args:
            demonstrations: The retrieved neighbours (any strategy).
            classes: Every class of the library; labels of demonstrations are added if missing.

        Returns:
            A ranking over all classes, probabilities summing to 1.
        """
        labels = [d.label for d in demonstrations]
        all_classes = sorted(set(classes) | set(labels))
        probs = self.probabilities(labels, np.array([d.similarity for d in demonstrations]), all_classes)
        return Ranking.from_scores(
            dict(zip(all_classes, probs.tolist(), strict=True)),
            predictor=self.name,
            demo_ids=[d.image_id for d in demonstrations],
        )
