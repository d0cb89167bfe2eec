"""A linear probe: multinomial logistic regression on frozen embeddings.

Linear probes on frozen features are the standard way to read out what an
encoder knows (SimCLR, Chen et al., ICML 2020, https://arxiv.org/abs/2002.05709,
section 4); on small micrograph sets frozen ImageNet features with a linear or
SVM head are the strongest published baseline (frozen ImageNet DenseNet features
+ SVM reach 0.971 top-1 on the SEM nanomaterial set, as the GDL-NMID paper's
comparison reports). The features are standardised first so that one regularisation strength suits encoders of any
dimension and scale.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from nmid_desktop.core.errors import LabelError
from nmid_desktop.predict.ranking import Ranking

DEFAULT_C = 1.0
DEFAULT_MAX_ITER = 1000


class ProbePredictor:
    """Logistic regression on embeddings, fitted on the labelled library.

    Thread-safety: :meth:`rank` and :meth:`rank_many` read one immutable snapshot of the
    fitted model; :meth:`fit` and :meth:`ensure_fitted` build a new model and swap it in under
    a lock, so a query never sees half a model.

    Args:
        c: Inverse regularisation strength of the logistic regression.
        max_iter: Solver iterations (L-BFGS).
        seed: Random state, for reproducible fits.
        balanced: Weight each class inversely to its count (scikit-learn's
            ``class_weight="balanced"``), so a rare class is not out-voted by a common one
            (King & Zeng 2001, "Logistic regression in rare events data"); on a library with
            equal class counts the fit is the same.
    """

    name = "logreg"

    def __init__(
        self, c: float = DEFAULT_C, max_iter: int = DEFAULT_MAX_ITER, seed: int = 0, *, balanced: bool = False
    ) -> None:
        if c <= 0:
            raise ValueError("c must be positive")
        self.c = float(c)
        self.balanced = bool(balanced)
        self.max_iter = int(max_iter)
        self.seed = int(seed)
        self._lock = threading.Lock()
        self._state: tuple[Hashable, Any, list[str]] | None = None  # (key, model or None, classes)
        self.fits = 0  # how many times a model was fitted (tests and logs read it)

    @property
    def key(self) -> Hashable | None:
        """What the current model was fitted on (e.g. ``(encoder key, labels_version)``), or None."""
        state = self._state
        return None if state is None else state[0]

    @property
    def classes(self) -> list[str]:
        """Classes of the current model, sorted."""
        state = self._state
        return [] if state is None else list(state[2])

    def fit(self, vectors: np.ndarray, labels: Sequence[str], *, key: Hashable = None) -> ProbePredictor:
        """Fit on labelled embeddings.

        Args:
            vectors: Shape (N, D).
            labels: N class names.
            key: Remembered as :attr:`key`.

        Returns:
            self.

        Raises:
            LabelError: No labelled embeddings.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        vectors = np.asarray(vectors, dtype=np.float32)
        labels = [str(label) for label in labels]
        if len(vectors) == 0 or len(vectors) != len(labels):
            raise LabelError("the probe needs labelled images with embeddings")
        classes = sorted(set(labels))
        model = None
        if len(classes) > 1:  # one class: nothing to learn, the ranking is that class
            model = make_pipeline(
                StandardScaler(),
                LogisticRegression(
                    C=self.c,
                    max_iter=self.max_iter,
                    random_state=self.seed,
                    class_weight="balanced" if self.balanced else None,
                ),
            )
            model.fit(vectors, labels)
        with self._lock:
            self._state = (key, model, classes)
            self.fits += 1
        return self

    def ensure_fitted(
        self, key: Hashable, data: Callable[[], tuple[np.ndarray, Sequence[str]]]
    ) -> ProbePredictor:
        """Refit only when ``key`` differs from the current one (e.g. the labels version moved).

        Args:
            key: Identifies the training data, e.g. ``(encoder key, labels_version)``.
            data: Returns ``(vectors (N, D), labels)``; called only when a refit is needed.
        """
        if self._state is not None and self._state[0] == key:
            return self
        vectors, labels = data()
        return self.fit(vectors, labels, key=key)

    def predict_proba(self, vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Class probabilities.

        Args:
            vectors: Shape (N, D).

        Returns:
            ``(classes (C,), probabilities (N, C))``.
        """
        state = self._state
        if state is None:
            raise LabelError("the probe has not been fitted")
        _, model, classes = state
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self._dim(model, vectors))
        if model is None:
            return list(classes), np.ones((len(vectors), 1))
        return [str(c) for c in model.classes_], model.predict_proba(vectors)

    @staticmethod
    def _dim(model: Any, vectors: np.ndarray) -> int:
        if model is not None and hasattr(model, "n_features_in_"):
            return int(model.n_features_in_)
        return int(np.asarray(vectors).shape[-1])

    def rank_many(self, vectors: np.ndarray) -> list[Ranking]:
        """Rankings for many queries. Shape of ``vectors``: (N, D)."""
        classes, probs = self.predict_proba(vectors)
        return [Ranking.from_scores(dict(zip(classes, row.tolist(), strict=True)), predictor=self.name) for row in probs]

    def rank(self, vector: np.ndarray) -> Ranking:
        """The ranking for one query. Shape of ``vector``: (D,)."""
        return self.rank_many(np.asarray(vector).reshape(1, -1))[0]
