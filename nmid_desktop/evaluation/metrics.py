"""Classification metrics from rankings: top-k accuracy, per-class precision/recall/F1, confusion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nmid_desktop.predict.ranking import Ranking

TOP_KS = (1, 2, 3, 5)


@dataclass(frozen=True)
class Metrics:
    """Metrics of one configuration.

    Attributes:
        classes: Class order of the per-class arrays and the confusion matrix.
        n: Test images.
        top_k: k -> fraction of images whose true class is among the k best.
        precision, recall, f1: Per class, shape (C,) (0 where undefined, as sklearn's
            ``zero_division=0``).
        support: True images per class, shape (C,).
        confusion: Shape (C, C), rows true class, columns predicted (top-1) class.
    """

    classes: list[str]
    n: int
    top_k: dict[int, float]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def macro_f1(self) -> float:
        """Unweighted mean F1 over classes with support or predictions."""
        present = (self.support > 0) | (self.confusion.sum(axis=0) > 0)
        return float(self.f1[present].mean()) if present.any() else 0.0

    @property
    def top1(self) -> float:
        """Top-1 accuracy."""
        return self.top_k[1]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "n": self.n,
            "top_k": {str(k): v for k, v in self.top_k.items()},
            "macro_f1": self.macro_f1,
            "classes": list(self.classes),
            "per_class": {
                c: {
                    "precision": float(self.precision[i]),
                    "recall": float(self.recall[i]),
                    "f1": float(self.f1[i]),
                    "support": int(self.support[i]),
                }
                for i, c in enumerate(self.classes)
            },
            "confusion": self.confusion.astype(int).tolist(),
            **({"extra": dict(self.extra)} if self.extra else {}),
        }


def top_k_accuracy(true_labels: Sequence[str], rankings: Sequence[Ranking], k: int) -> float:
    """Fraction of images whose true class is among the ``k`` best of their ranking."""
    if len(true_labels) != len(rankings):
        raise ValueError("one ranking per true label")
    if not true_labels:
        return 0.0
    hits = sum(1 for t, r in zip(true_labels, rankings, strict=True) if t in r.labels[:k])
    return hits / len(true_labels)


def compute_metrics(
    true_labels: Sequence[str], rankings: Sequence[Ranking], classes: Sequence[str] | None = None, ks: Sequence[int] = TOP_KS
) -> Metrics:
    """All metrics of one configuration.

    Args:
        true_labels: N true classes.
        rankings: N rankings (their top-1 is the prediction).
        classes: Class order (default: sorted union of true and predicted classes).
        ks: Which top-k accuracies.
    """
    predicted = [r.top1 for r in rankings]
    order = list(classes) if classes is not None else sorted(set(true_labels) | set(predicted))
    extra = sorted((set(true_labels) | set(predicted)) - set(order))
    order += extra
    position = {c: i for i, c in enumerate(order)}
    confusion = np.zeros((len(order), len(order)), dtype=np.int64)
    for t, p in zip(true_labels, predicted, strict=True):
        confusion[position[t], position[p]] += 1
    tp = np.diag(confusion).astype(np.float64)
    predicted_count = confusion.sum(axis=0).astype(np.float64)
    support = confusion.sum(axis=1)
    precision = np.divide(tp, predicted_count, out=np.zeros_like(tp), where=predicted_count > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return Metrics(
        classes=order,
        n=len(true_labels),
        top_k={int(k): top_k_accuracy(true_labels, rankings, int(k)) for k in ks},
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
        confusion=confusion,
    )
