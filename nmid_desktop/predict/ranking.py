"""A full ranking of classes with probabilities: what every predictor returns."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nmid_desktop.core.store.base import PredictionRecord


@dataclass(frozen=True)
class Ranking:
    """Classes ordered best first, each with a probability; the probabilities sum to 1.

    Attributes:
        items: ``((label, probability), ...)`` best first.
        predictor: Which predictor made it (``knn``, ``logreg``, ``lmm``).
        demo_ids: The demonstrations it was based on (empty for the probe).
    """

    items: tuple[tuple[str, float], ...]
    predictor: str = ""
    demo_ids: tuple[int, ...] = field(default_factory=tuple)

    @classmethod
    def from_scores(
        cls, probabilities: Mapping[str, float], *, predictor: str = "", demo_ids: Iterable[int] = ()
    ) -> Ranking:
        """Order a class -> probability mapping (ties broken by class name, for determinism).

        Raises:
            ValueError: No classes, a negative probability, or a sum far from 1.
        """
        if not probabilities:
            raise ValueError("a ranking needs at least one class")
        total = float(sum(probabilities.values()))
        if any(p < 0 for p in probabilities.values()) or not math.isclose(total, 1.0, abs_tol=1e-4):
            raise ValueError(f"probabilities must be non-negative and sum to 1 (sum {total:.6f})")
        items = sorted(((str(c), float(p) / total) for c, p in probabilities.items()), key=lambda cp: (-cp[1], cp[0]))
        return cls(items=tuple(items), predictor=predictor, demo_ids=tuple(int(i) for i in demo_ids))

    @property
    def labels(self) -> list[str]:
        """Class names, best first."""
        return [label for label, _ in self.items]

    @property
    def top1(self) -> str:
        """The predicted class."""
        return self.items[0][0]

    @property
    def confidence(self) -> float:
        """Probability of the predicted class."""
        return self.items[0][1]

    @property
    def margin(self) -> float:
        """Probability gap between the best and second-best class (1.0 with one class)."""
        return self.items[0][1] - (self.items[1][1] if len(self.items) > 1 else 0.0)

    @property
    def entropy(self) -> float:
        """Shannon entropy of the probabilities in nats (0 = certain; log C = uniform)."""
        return -sum(p * math.log(p) for _, p in self.items if p > 0)

    def probability(self, label: str) -> float:
        """The probability of one class (0 when absent)."""
        return next((p for c, p in self.items if c == label), 0.0)

    def rank_of(self, label: str) -> int | None:
        """1-based position of a class in the ranking, None when absent."""
        return next((i + 1 for i, (c, _) in enumerate(self.items) if c == label), None)

    def top(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` best ``(label, probability)`` pairs."""
        return list(self.items[:n])

    def to_prediction(self, image_id: int, *, model: str | None = None, reason: str = "") -> PredictionRecord:
        """A record for ``store.add_prediction``."""
        return PredictionRecord(
            image_id=int(image_id),
            predictor=self.predictor,
            label=self.top1,
            ranking=list(self.items),
            confidence=self.confidence,
            model=model,
            demo_ids=list(self.demo_ids),
            reason=reason,
        )


def uncertainty_order(rankings: Sequence[tuple[int, Ranking]]) -> list[int]:
    """Image ids ordered most uncertain first (smallest margin, then highest entropy): the review queue."""
    return [image_id for image_id, r in sorted(rankings, key=lambda ir: (ir[1].margin, -ir[1].entropy, ir[0]))]
