"""The window's "likely mislabelled" queue: find the suspects as a job, then record each decision.

Finding them is :func:`nmid_desktop.predict.review.label_suspects` (confident learning with
cleanlab over out-of-fold probabilities), the same function as ``nmid review errors``; this
module adds what the window needs around it: progress and cancel points, the images'
thumbnails, leaving out labels an expert already checked and kept, and the three decisions
(keep, accept the suggestion, choose another class), each one history row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.jobs import CancelToken, Job, Progress
from nmid_desktop.predict.review import ERRORS_PREDICTOR, label_suspects
from nmid_desktop.workspace.engine import Engine, LabelChange

log = logging.getLogger(__name__)

SUSPECT_THUMB_SIZE = 384
DEFAULT_LIMIT = 200


@dataclass(frozen=True)
class SuspectItem:
    """One suspect as the queue shows it.

    Attributes:
        image_id: Library id.
        name: Original file name.
        label: Its current label.
        suggested: The class the out-of-fold prediction prefers.
        score: In [0, 1], higher = more likely wrong.
        thumb: 2-D uint8 thumbnail (None when the file could not be read).
    """

    image_id: int
    name: str
    label: str
    suggested: str
    score: float
    thumb: np.ndarray | None = None


def find_suspects(engine: Engine, token: CancelToken, *, limit: int = DEFAULT_LIMIT,
                  predictor: str = ERRORS_PREDICTOR) -> Job[list[SuspectItem]]:
    """Likely mislabelled images, most likely first, with thumbnails.

    Labels whose newest history row is a ``kept`` decision are left out: an expert already
    checked them. The out-of-fold fit is one block (no cancel point inside it); every
    thumbnail is one.

    Yields:
        Progress: the fit, then one step per thumbnail.

    Raises:
        LabelError: Fewer than two classes with at least two images each.
    """
    yield Progress(0, 1, "out-of-fold probabilities (confident learning)")
    token.raise_if_cancelled()
    suspects = label_suspects(engine.classifier, predictor)
    yield Progress(0, max(1, min(limit, len(suspects))), "checking the suspects")
    store, settings = engine.store, engine.settings
    out: list[SuspectItem] = []
    for suspect in suspects:
        if len(out) >= limit:
            break
        latest = store.history(suspect.image_id, limit=1)
        if latest and latest[0].kind == "kept" and latest[0].new_label == suspect.label:
            continue
        record = store.get_image(suspect.image_id)
        try:
            thumb: np.ndarray | None = engine.thumbnails.get(
                record.sha256, record.page, SUSPECT_THUMB_SIZE, record.path,
                record.crop_box if settings.crop_data_bar else None, settings.max_pixels,
            )
        except NmidError as exc:
            log.info("no thumbnail for suspect %s: %s", record.id, exc)
            thumb = None
        out.append(SuspectItem(suspect.image_id, suspect.name, suspect.label, suspect.suggested, suspect.score, thumb))
        yield Progress(len(out), max(1, min(limit, len(suspects))), suspect.name or str(suspect.image_id))
    return out


def keep_label(engine: Engine, image_id: int, actor: str = "") -> LabelChange:
    """The expert checked the suspect label and keeps it: accepted, recorded as ``kept``."""
    return engine.set_review(image_id, "accepted", actor=actor, kind="kept")


def correct_label(engine: Engine, image_id: int, label: str, actor: str = "") -> LabelChange:
    """The expert corrects the label (the suggestion, or another class)."""
    return engine.set_label(image_id, label, source="expert", actor=actor)
