"""Review queues over a library: likely label errors and what to label next.

The two use cases behind ``nmid review errors`` / ``nmid review next`` and the window's
review queues: both take a prepared :class:`~nmid_desktop.predict.service.Classifier`
and return plain dataclasses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from nmid_desktop.core.errors import LabelError
from nmid_desktop.core.jobs import Job, Progress
from nmid_desktop.core.store.base import ImageFilter
from nmid_desktop.predict.active import Candidate, next_to_label
from nmid_desktop.predict.label_errors import Suspect, describe, rank_label_issues

if TYPE_CHECKING:
    from nmid_desktop.predict.service import Classifier

ERRORS_PREDICTOR = "logreg"


def _names(clf: Classifier, ids: list[int]) -> dict[int, str]:
    return {r.id: r.original_name for r in clf.store.images(ImageFilter(ids=ids))}


def label_suspects(clf: Classifier, predictor: str = ERRORS_PREDICTOR, *, k: int = 5) -> list[Suspect]:
    """Labelled images whose label confident learning flags as likely wrong, most likely first.

    Out-of-fold probabilities come from the calibration of ``predictor`` (cached per labelled
    set, so a second call after no label change is instant).

    Raises:
        LabelError: Fewer than two classes, or (probe) a class with a single image.
    """
    model = clf.trust_model()
    calibration = model.calibration(predictor, k)
    if calibration is None:
        raise LabelError("finding label errors needs two classes with at least two images each")
    by_id = dict(zip(model.ids.tolist(), model.labels, strict=True))
    labels = [by_id[int(i)] for i in calibration.ids]
    suspects = rank_label_issues(calibration.ids, labels, calibration.oof, calibration.classes)
    return describe(suspects, _names(clf, [s.image_id for s in suspects]))


def labelling_queue(clf: Classifier, *, k: int | None = None, limit: int | None = None) -> Job[list[Candidate]]:
    """Unlabelled images ordered by how much a label would help (margin with diversity).

    Unlabelled images are embedded first when their embeddings are not cached.

    Yields:
        Progress of embedding (cancel points).
    """
    from nmid_desktop.ml.embed import embed_images

    model = clf.trust_model()
    wanted = [r.id for r in clf.store.images(ImageFilter(unlabelled=True, synthetic=False))]
    if not wanted:
        return []
    yield Progress(0, len(wanted), "embedding unlabelled images")
    ids, vectors = yield from embed_images(clf.store, clf.encoder, wanted)
    queue = next_to_label(np.asarray(ids), np.asarray(vectors), model.vectors, model.labels, k=int(k or clf.settings.k))
    queue = queue[:limit] if limit else queue
    names = _names(clf, [c.image_id for c in queue])
    return [Candidate(c.image_id, c.predicted, c.margin, names.get(c.image_id, "")) for c in queue]
