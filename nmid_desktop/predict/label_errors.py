"""Likely label errors by confident learning (cleanlab) on out-of-fold probabilities.

Confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 2021, https://arxiv.org/abs/1911.00068) estimates
the joint distribution of given and true labels from out-of-fold predicted
probabilities and flags the images whose given label it most likely got wrong.
cleanlab is its reference implementation and is well kept, so we call its
``find_label_issues`` rather than re-deriving the confident joint. The
out-of-fold probabilities are the ones the calibration already computes
(:mod:`nmid_desktop.predict.calibration`): the probe's k-fold predictions by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nmid_desktop.core.errors import LabelError, NmidError


@dataclass(frozen=True)
class Suspect:
    """An image whose label is likely wrong.

    Attributes:
        image_id: Library id.
        label: Its current label.
        suggested: The class the out-of-fold prediction prefers.
        score: In [0, 1], higher = more likely wrong (1 - cleanlab's self-confidence label quality).
        flagged: True when confident learning counts it as an issue (False: only ranked).
        name: Original file name (filled in by :func:`describe`).
    """

    image_id: int
    label: str
    suggested: str
    score: float
    flagged: bool = True
    name: str = ""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (the fields of ``nmid review errors --json``)."""
        return {"id": self.image_id, "name": self.name, "label": self.label, "suggested": self.suggested,
                "score": round(self.score, 4), "flagged": self.flagged}


def rank_label_issues(
    ids: Sequence[int] | np.ndarray,
    labels: Sequence[str],
    oof: np.ndarray,
    classes: Sequence[str],
    *,
    include_unflagged: bool = False,
) -> list[Suspect]:
    """Suspects, most likely wrong first.

    Args:
        ids: Image ids, shape (N,).
        labels: Their current labels.
        oof: Out-of-fold probabilities, shape (N, C), columns in ``classes`` order.
        classes: Column order.
        include_unflagged: Also list every other image after the flagged ones (ordered by score),
            so that a top-N always has N entries (what the benchmark measures).

    Raises:
        NmidError: cleanlab is not installed.
        LabelError: Fewer than two classes, or a label not among ``classes``.
    """
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError as exc:
        raise NmidError(f"finding label errors needs cleanlab (pip install cleanlab): {exc}") from None
    position = {c: i for i, c in enumerate(classes)}
    if len(classes) < 2:
        raise LabelError("finding label errors needs at least two classes")
    unknown = sorted(set(labels) - set(position))
    if unknown:
        raise LabelError(f"labels without a probability column: {', '.join(unknown)}")
    y = np.array([position[label] for label in labels], dtype=np.int64)
    p = np.clip(np.asarray(oof, dtype=np.float64), 1e-9, 1.0)
    p /= p.sum(axis=1, keepdims=True)
    # n_jobs=1: deterministic, and no process pool on a lab PC (or inside the window's worker).
    flagged = find_label_issues(y, p, return_indices_ranked_by="self_confidence", n_jobs=1)
    quality = get_label_quality_scores(y, p, method="self_confidence")
    order = list(flagged)
    if include_unflagged:
        seen = {int(i) for i in flagged}
        order += [int(i) for i in np.argsort(quality, kind="stable") if int(i) not in seen]
    seen_flagged = {int(i) for i in flagged}
    out = []
    for n in order:
        n = int(n)
        row = p[n].copy()
        row[y[n]] = -1.0  # the suggestion is the best class other than the given one
        out.append(Suspect(int(ids[n]), str(labels[n]), str(classes[int(row.argmax())]),
                           float(1.0 - quality[n]), n in seen_flagged))
    return out


def describe(suspects: Sequence[Suspect], names: dict[int, str]) -> list[Suspect]:
    """The suspects with their original file names filled in."""
    return [Suspect(s.image_id, s.label, s.suggested, s.score, s.flagged, names.get(s.image_id, "")) for s in suspects]
