"""Classify a whole folder (a job for the Batch tab; no Qt).

Steps: import the folder (duplicates are found, not copied again), embed the new
images in batches, retrieve each image's demonstrations and rank its classes
locally, then, when the model is on, ask the vision model (cost estimated first,
stopped at the budget cap). Each image's result is yielded as it is known, so
the table fills while the batch runs; cancelling keeps everything finished.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nmid_desktop.core.config import Settings
from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.jobs import CancelToken, Job, Progress
from nmid_desktop.core.store import Store, open_library
from nmid_desktop.inference.protocol import ImageEncoder

if TYPE_CHECKING:
    from nmid_desktop.predict.service import Classifier


@dataclass(frozen=True)
class BatchRow:
    """One image's outcome in a batch.

    Attributes:
        image_id: Library id.
        name: File name.
        label: Label before the batch (an expert's or an import's), or None.
        local: Local top class, or None.
        local_confidence: Its probability.
        margin: Gap to the second class (small = uncertain).
        model: The model's class, None when not asked or invalid.
        model_confidence: Its stated confidence.
        model_note: Why the model's answer is missing or invalid.
        written: The label written by the batch (pending review), or None.
    """

    image_id: int
    name: str
    label: str | None
    local: str | None = None
    local_confidence: float | None = None
    margin: float | None = None
    model: str | None = None
    model_confidence: float | None = None
    model_note: str = ""
    written: str | None = None

    @property
    def agree(self) -> bool | None:
        """Whether local and model agree (None when either is missing)."""
        if self.local is None or self.model is None:
            return None
        return self.local == self.model


@dataclass
class BatchSummary:
    """What a batch did."""

    rows: list[BatchRow] = field(default_factory=list)
    import_summary: str = ""
    estimate: Any = None  # lmm CostEstimate when the model was on
    model_failures: list[tuple[Any, str]] = field(default_factory=list)
    stopped: str | None = None
    estimate_only: bool = False

    @property
    def disagreements(self) -> int:
        """Images where local and model disagree."""
        return sum(1 for r in self.rows if r.agree is False)


def batch_job(
    library: Path,
    settings: Settings,
    folder: Path,
    token: CancelToken,
    *,
    use_model: bool = False,
    write_labels: bool = True,
    estimate_only: bool = False,
    encoder: ImageEncoder | None = None,
) -> Job[BatchSummary]:
    """Classify every image of a folder.

    Args:
        library: The library folder (opened here, in the worker's thread).
        settings: All settings (k, strategy, local predictor, model, budget).
        folder: The folder (searched recursively).
        token: Cancels between images and model calls.
        use_model: Also ask the vision model (prediction stored with tokens and cost).
        write_labels: Give images without a label the prediction as a *pending* label
            (the model's when valid and preferred, else the local one); an expert reviews
            them in the library's review queue. Existing labels are never overwritten.
        estimate_only: With ``use_model``, stop after the cost estimate (nothing is sent).
        encoder: A loaded encoder to share; by default the library's is loaded.

    Yields:
        Progress; ``data`` is a :class:`BatchRow` when an image's result is known, or the
        model's cost estimate.

    Returns:
        The :class:`BatchSummary`.
    """
    from nmid_desktop.core.importer import import_files
    from nmid_desktop.ml.embed import embed_images
    from nmid_desktop.predict.service import Classifier

    summary = BatchSummary(estimate_only=estimate_only)
    with open_library(library) as store:
        report = yield from import_files(
            store, [Path(folder)], max_pixels=settings.max_pixels, detect_bar=settings.crop_data_bar, actor="batch"
        )
        summary.import_summary = report.summary()
        ids = list(dict.fromkeys(int(i.image_id) for i in report.items if i.image_id is not None))
        if not ids:
            raise NmidError(f"no images to classify in {folder} ({report.summary()})")
        from nmid_desktop.workspace.engine import DEMOS_INCLUDE_PENDING

        # Pending labels (this batch's own among them) never vote for the next image.
        classifier = Classifier(store, settings, encoder=encoder, include_pending=DEMOS_INCLUDE_PENDING)
        yield Progress(0, len(ids), "loading the encoder")
        yield from classifier.prepare()
        n = len(ids)
        for progress in embed_images(store, classifier.encoder, ids, crop=settings.crop_data_bar,
                                     max_pixels=settings.max_pixels):
            yield Progress(progress.done, progress.total, f"embedding: {progress.message}")
        rows: dict[int, BatchRow] = {}
        for i, image_id in enumerate(ids):
            record = store.get_image(image_id)
            row = BatchRow(image_id, record.original_name, record.label)
            try:
                vector = classifier.embed_image(image_id)
                ranking = classifier.predict_local(vector, exclude_ids=(image_id,))
            except NmidError as exc:
                row = BatchRow(image_id, record.original_name, record.label, model_note=str(exc))
            else:
                store.add_prediction(ranking.to_prediction(image_id))
                row = BatchRow(
                    image_id, record.original_name, record.label, ranking.top1, ranking.confidence, ranking.margin
                )
            rows[image_id] = row
            yield Progress(i + 1, n, record.original_name, data=row)
        if use_model:
            yield from _model_pass(store, classifier, ids, settings, token, rows, summary, estimate_only)
        if write_labels and not estimate_only:
            prefer_model = settings.predictor in ("lmm", "both")
            with store.transaction():
                for image_id, row in rows.items():
                    if row.label is not None:
                        continue
                    if prefer_model and row.model is not None:
                        label, source, confidence = row.model, "lmm", row.model_confidence
                        model = settings.lmm.vision_model
                    elif row.local is not None:
                        label, source, confidence, model = row.local, "local", row.local_confidence, None
                    else:
                        continue
                    store.set_label(image_id, label, source=source, model=model, confidence=confidence,
                                    review="pending", actor="batch")
                    rows[image_id] = _replace(row, written=label)
        summary.rows = [rows[i] for i in ids]
        return summary


def _replace(row: BatchRow, **changes: Any) -> BatchRow:
    from dataclasses import replace

    return replace(row, **changes)


def _model_pass(
    store: Store,
    classifier: Classifier,
    ids: list[int],
    settings: Settings,
    token: CancelToken,
    rows: dict[int, BatchRow],
    summary: BatchSummary,
    estimate_only: bool,
) -> Generator[Progress, None, None]:
    """Ask the model about every image (a sub-job of :func:`batch_job`)."""
    from nmid_desktop.lmm.predict import LmmPrediction, predict_images

    job = predict_images(store, classifier, ids, settings, dry_run=estimate_only, token=token)
    batch = None
    try:
        while True:
            progress = next(job)
            data = progress.data
            if isinstance(data, LmmPrediction) and data.image_id in rows:
                row = rows[data.image_id]
                if data.valid:
                    row = _replace(row, model=data.label, model_confidence=data.confidence)
                else:
                    row = _replace(row, model_note=data.reason)
                rows[data.image_id] = row
                yield Progress(progress.done, progress.total, f"model: {row.name}", data=row)
            elif data is not None and summary.estimate is None:
                summary.estimate = data
                yield Progress(progress.done, progress.total, progress.message, data=data)
            else:
                yield Progress(progress.done, progress.total, f"model: {progress.message}")
    except StopIteration as stop:
        batch = stop.value
    finally:
        job.close()
    if batch is not None:
        summary.estimate = batch.estimate
        summary.model_failures = list(batch.failures)
        summary.stopped = batch.stopped
