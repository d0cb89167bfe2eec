"""What the window and the CLI show beside a label: calibrated confidence and novelty.

:class:`TrustModel` is built once per labelled set (the classifier service rebuilds it when
the labels version moves) from the labelled embeddings; :meth:`TrustModel.assess` turns a
raw ranking plus the query's neighbour similarities into an :class:`Assessment`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nmid_desktop.predict.calibration import Calibration, CalibrationCache, calibrate_ranking
from nmid_desktop.predict.novelty import DEFAULT_THRESHOLD, Novelty, NoveltyModel
from nmid_desktop.predict.ranking import Ranking


@dataclass(frozen=True)
class Assessment:
    """One prediction with what makes it trustworthy or not.

    Attributes:
        ranking: Calibrated ranking (same order as ``raw``; probabilities temperature-scaled).
        raw: The predictor's own ranking.
        novelty: How unlike the library the query is; when ``novelty.novel`` the window shows
            ``novelty.text`` as a badge instead of a confident label. None: no trust model yet
            (a large library's first fit runs in the background; ``ranking`` is then raw).
        temperature: The calibration's T (1.0: not calibrated).
        stale: True when calibration and novelty reference come from the labelled set before
            the latest label changes (the window's labelling loop refits them in the background).
    """

    ranking: Ranking
    raw: Ranking
    novelty: Novelty | None
    temperature: float = 1.0
    stale: bool = False

    @property
    def trusted(self) -> bool:
        """False when the query is unlike the library: the label must not be shown as confident."""
        return self.novelty is None or not self.novelty.novel

    @property
    def label(self) -> str:
        """The predicted class."""
        return self.ranking.top1

    @property
    def confidence(self) -> float:
        """Calibrated probability of the predicted class."""
        return self.ranking.confidence

    @property
    def summary(self) -> str:
        """One line, e.g. ``porous 62 % (unlike your library: nearest 0.70, typical 0.91)``."""
        head = f"{self.label} {self.confidence:.0%}"
        return f"{head} ({self.novelty.text})" if self.novelty is not None and self.novelty.novel else head

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"label": self.label, "confidence": round(self.confidence, 4),
                "ranking": [[c, round(p, 4)] for c, p in self.ranking.items],
                "raw_confidence": round(self.raw.confidence, 4), "temperature": round(self.temperature, 4),
                "novelty": self.novelty.to_dict() if self.novelty is not None else None, "trusted": self.trusted, "stale": self.stale}


class TrustModel:
    """Novelty reference and calibrations for one labelled set.

    Args:
        ids: Labelled image ids, shape (N,).
        vectors: Their embeddings, shape (N, D), L2-normalised.
        labels: N class names.
        encoder_key: Part of the calibration cache key.
        threshold: Novelty threshold.
    """

    def __init__(
        self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray, labels: Sequence[str], *, encoder_key: str = "",
        threshold: float = DEFAULT_THRESHOLD, cache: CalibrationCache | None = None,
    ) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.labels = [str(label) for label in labels]
        self.encoder_key = encoder_key
        self.novelty = NoveltyModel(self.vectors, self.labels, threshold=threshold)
        self.cache = cache or CalibrationCache()
        # Per (predictor, K): the cache's key digests every (id, label), too dear for each query.
        self._calibrations: dict[tuple[str, int], Calibration | None] = {}

    def calibration(self, predictor: str, k: int = 5) -> Calibration | None:
        """The calibration of a local predictor on this labelled set (None below two classes or
        when a class has a single image for the probe)."""
        from nmid_desktop.core.errors import LabelError

        if (predictor, k) in self._calibrations:
            return self._calibrations[(predictor, k)]
        found: Calibration | None = None
        if len(set(self.labels)) >= 2:
            try:
                found = self.cache.get(predictor, self.ids, self.vectors, self.labels, encoder_key=self.encoder_key, k=k)
            except LabelError:
                found = None
        self._calibrations[(predictor, k)] = found
        return found

    def assess(
        self, raw: Ranking, vector: np.ndarray, *, k: int = 5, exclude_ids: Sequence[int] = (), stale: bool = False
    ) -> Assessment:
        """Calibrate ``raw`` and score the query's novelty.

        Args:
            raw: The predictor's ranking (``knn`` or ``logreg``).
            vector: The query embedding, shape (D,).
            k: K of the kNN vote (selects the matching calibration).
            exclude_ids: Library images left out of the neighbours (the query itself).
            stale: Passed on to the assessment (this model predates the latest label changes).
        """
        sims = self.vectors @ np.asarray(vector, dtype=np.float32).reshape(-1)
        if len(exclude_ids):
            sims = sims[~np.isin(self.ids, np.asarray(list(exclude_ids), dtype=np.int64))]
        novelty = self.novelty.score(np.sort(sims)[-max(1, self.novelty.m):], raw.top1)
        calibration = self.calibration(raw.predictor, k)
        return Assessment(
            ranking=calibrate_ranking(raw, calibration), raw=raw, novelty=novelty,
            temperature=calibration.temperature if calibration is not None else 1.0, stale=stale,
        )
