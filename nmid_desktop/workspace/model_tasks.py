"""Model (LMM) work for the window: each job opens its own store connection, no Qt.

Every function here runs in a worker thread with plain inputs (a library
folder, settings, image ids) and returns plain data. Network calls go through
:mod:`nmid_desktop.lmm`, which caches responses, retries, and never logs the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nmid_desktop.core.config import Settings
from nmid_desktop.core.jobs import CancelToken, Job
from nmid_desktop.core.store import DescriptionRow, open_library
from nmid_desktop.workspace.display import ModelAnswer


def endpoint_configured(settings: Settings) -> bool:
    """Whether the model is reachable in principle (base URL or key set); no network."""
    from nmid_desktop.lmm import endpoint_configured as configured

    return configured(settings.lmm)


def model_predict_job(
    library: Path | str,
    settings: Settings,
    image_id: int,
    demos: Sequence[tuple[int, str]],
    token: CancelToken,
) -> Job[ModelAnswer]:
    """Ask the vision model for one image's class from the demonstrations the window shows.

    The call takes the same paid-call path as ``nmid classify --predictor lmm``
    (:func:`nmid_desktop.lmm.predict.predict_queries`): estimate, budget, model check,
    usage and the stored prediction.

    Args:
        library: The library folder or URL.
        settings: All settings.
        image_id: The query image.
        demos: ``(image_id, label)`` of the demonstrations, most similar first.
        token: Cancels the request and retry waits.

    Raises:
        BudgetExceeded: When the call's estimate would pass the budget.
        LmmError: A fatal endpoint failure (after retries).
        NmidError: The call failed, with the endpoint's reason.
    """
    from nmid_desktop.core.errors import NmidError
    from nmid_desktop.lmm.images import source_from_record
    from nmid_desktop.lmm.predict import PredictQuery, predict_queries

    with open_library(library, create=False) as store:
        crop = settings.crop_data_bar
        query = source_from_record(store.get_image(image_id), crop_data_bar=crop)
        demo_sources = [(source_from_record(store.get_image(i), crop_data_bar=crop), label) for i, label in demos]
        job = predict_queries(store, [PredictQuery(image_id, query, demo_sources)], settings, token=token)
        batch = yield from job
    if batch.failures:
        raise NmidError(f"the model call failed: {batch.failures[0][1]}")
    if not batch:
        raise NmidError("the model gave no answer" + (" (budget reached)" if batch.stopped else ""))
    prediction = batch[0]
    return ModelAnswer(
        model=prediction.model,
        label=prediction.label,
        confidence=prediction.confidence,
        rationale=prediction.rationale,
        ranking=tuple(label for label, _ in prediction.ranking),
        valid=prediction.valid,
        reason=prediction.reason,
        cost_usd=prediction.cost_usd or 0.0,
        cached=prediction.cached,
    )


@dataclass(frozen=True)
class DescriptionView:
    """A structured description as the Description tab shows it."""

    image_id: int
    model: str
    prompt_version: str
    rows: tuple[DescriptionRow, ...]
    at: str = ""
    cost_usd: float = 0.0
    cached: bool = False


def stored_description(library: Path, image_id: int) -> DescriptionView | None:
    """The newest stored description of an image, if any (no network)."""
    with open_library(library, create=False) as store:
        found = store.descriptions(image_id)
    if not found:
        return None
    latest = found[0]
    return DescriptionView(latest.image_id, latest.model, latest.prompt_version, tuple(latest.rows), latest.at or "")


def describe_job(library: Path, settings: Settings, image_id: int, token: CancelToken) -> Job[DescriptionView]:
    """Describe one image in the paper's ten groups (stored with model and prompt version).

    Raises:
        NmidError: When the model's answer was unusable, with its reason.
    """
    from nmid_desktop.core.errors import NmidError
    from nmid_desktop.lmm.describe import describe_images

    with open_library(library, create=False) as store:
        batch = yield from describe_images(store, [image_id], settings, token=token)
    if batch.failures:
        raise NmidError(f"the description failed: {batch.failures[0][1]}")
    if not batch.descriptions:
        raise NmidError("the model gave no description" + (" (budget reached)" if batch.stopped else ""))
    description = batch.descriptions[0]
    if not description.ok:
        raise NmidError(f"the description is unusable: {description.error}")
    return DescriptionView(
        image_id, description.model, description.prompt_version, tuple(description.rows), "",
        description.cost_usd or 0.0, description.cached,
    )


@dataclass(frozen=True)
class SyntheticItem:
    """One synthetic image awaiting the expert's decision."""

    image_id: int
    label: str | None
    review: str
    thumb: object  # (h, w) uint8 array or None


def synthetic_for(library: Path, source_id: int, thumb_size: int = 180) -> list[SyntheticItem]:
    """The synthetic images made from one real image, with thumbnails."""
    from nmid_desktop.core.store import ImageFilter
    from nmid_desktop.workspace.display import ThumbnailCache

    cache = ThumbnailCache()
    items: list[SyntheticItem] = []
    with open_library(library, create=False) as store:
        for record in store.iter_images(ImageFilter(synthetic=True)):
            if record.source_image_id != source_id:
                continue
            try:
                thumb = cache.get(record.sha256, record.page, thumb_size, record.path, None)
            except Exception:  # noqa: BLE001 - an unreadable image still gets its row
                thumb = None
            items.append(SyntheticItem(record.id, record.label, record.review, thumb))
    return items


def synthesize_job(library: Path, settings: Settings, image_id: int, n: int, token: CancelToken) -> Job[list[SyntheticItem]]:
    """Make ``n`` synthetic images from the image's latest description; they await review."""
    from nmid_desktop.lmm.synthesize import synthesize_images

    with open_library(library, create=False) as store:
        yield from synthesize_images(store, image_id, n, settings, size="1024x1024", token=token)
    return synthetic_for(library, image_id)


def list_models_job(settings: Settings, token: CancelToken, api_key: str | None = None) -> list[tuple[str, str]]:
    """The endpoint's models as ``(id, note)``; the note names a shutdown date or retirement.

    Args:
        settings: Base URL and timeouts.
        token: Cancels retry waits.
        api_key: A key typed but not saved yet (used for this call only); None: the stored one.
    """
    from nmid_desktop.lmm.catalog import list_models
    from nmid_desktop.lmm.client import LmmClient, require_endpoint

    endpoint = require_endpoint(settings.lmm) if not api_key else None
    if endpoint is None:
        from nmid_desktop.lmm.client import OPENAI_URL, Endpoint

        endpoint = Endpoint(
            base_url=(settings.lmm.base_url or OPENAI_URL).rstrip("/"), api_key=api_key or "",
            organization=settings.lmm.organization, timeout_s=float(settings.lmm.timeout_s),
            max_retries=max(0, int(settings.lmm.max_retries)), key_source="typed",
        )
    with LmmClient(endpoint, cache=None) as client:
        models = list_models(client, refresh=True)
    out = []
    for info in models:
        note = ""
        if info.retired():
            note = "retired"
        elif info.shutdown_date is not None:
            note = f"shuts down {info.shutdown_date.isoformat()}"
        out.append((info.id, note))
    return sorted(out)
