"""Few-shot prediction from retrieved demonstrations, step 3 of GDL-NMID.

The prompt holds an instruction, K demonstrations (image and class) retrieved by
the encoder (``similar()`` with the strategy and K of the settings), the query
image, and the allowed class names; no parameter is updated (in-context learning,
as in Ferber et al. 2024, where three kNN-retrieved examples lifted GPT-4V from
0.325 to 0.725 top-1). The answer is JSON (label, ranked top-5, confidence, a
short rationale grounded in visible features) through structured outputs where
the endpoint supports them, else parsed from text.

A label outside the taxonomy gets exactly one repair request; if the second answer
is still outside, the prediction is stored as invalid with the reason, and the
local predictor's answer stands.

The core functions take demonstrations as plain data (``(image, label)`` pairs, the
image an array, a path or an :class:`ImageSource`), so they run without the
encoder; :func:`predict_images` fetches them through the classifier.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nmid_desktop.core.config import Settings
from nmid_desktop.core.errors import LabelError, NmidError
from nmid_desktop.core.jobs import CancelToken, Job, Progress
from nmid_desktop.core.store.base import PredictionRecord, Store
from nmid_desktop.lmm.client import ChatResult, LmmClient, require_endpoint
from nmid_desktop.lmm.cost import (
    BudgetExceeded,
    CostEstimate,
    PriceTable,
    chat_cost,
    chat_estimate,
)
from nmid_desktop.lmm.images import EncodedImage, ImageSource, encode_source, source_size
from nmid_desktop.lmm.paid_batch import paid_calls, paid_session
from nmid_desktop.lmm.parsing import ParsedPrediction, parse_prediction, ranking_from
from nmid_desktop.lmm.questions import PromptTemplate, load_prompt
from nmid_desktop.lmm.usage import record_paid_call
from nmid_desktop.predict.retrieval import DemonstrationSource

log = logging.getLogger(__name__)

ImageLike = np.ndarray | Path | str | ImageSource
Demo = tuple[ImageLike, str]
"""A demonstration as plain data: ``(image, class name)``."""


@dataclass(frozen=True)
class LmmPrediction:
    """The model's answer for one query image.

    Attributes:
        item: What was asked about (image id or path).
        image_id: Library id of the query, or None.
        label: The class, or None when invalid.
        ranking: ``(class, probability)`` best first (see :func:`~nmid_desktop.lmm.parsing.ranking_from`).
        confidence: The model's confidence in ``label``.
        rationale: Its short reason.
        valid: False when no allowed class came back (after one repair) or the model refused.
        reason: Why invalid, or notes ("repaired ...").
        model: The vision model.
        prompt_version: e.g. ``predict-v1``.
        demo_ids: Library ids of the demonstrations shown (in prompt order).
        demo_labels: Their classes.
        tokens_in: Input tokens of all calls (first and repair).
        tokens_out: Output tokens of all calls.
        cost_usd: Cost of the calls (0 for cache hits), None when the model has no price.
        cached: Every call was answered from the cache.
        repaired: A repair request was needed.
        prediction_id: Stored row id, when stored.
        dry_run: True for an estimate-only placeholder (nothing sent).
    """

    item: Any
    image_id: int | None
    label: str | None
    ranking: list[tuple[str, float]]
    confidence: float | None
    rationale: str
    valid: bool
    reason: str
    model: str
    prompt_version: str
    demo_ids: list[int] = field(default_factory=list)
    demo_labels: list[str] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = 0.0
    cached: bool = False
    repaired: bool = False
    prediction_id: int | None = None
    dry_run: bool = False

    def record(self) -> PredictionRecord:
        """The store's record of this prediction (needs ``image_id``)."""
        if self.image_id is None:
            raise NmidError("only library images can store predictions")
        return PredictionRecord(
            image_id=self.image_id,
            predictor="lmm",
            label=self.label,
            ranking=list(self.ranking),
            confidence=self.confidence,
            model=self.model,
            prompt_version=self.prompt_version,
            rationale=self.rationale,
            demo_ids=list(self.demo_ids),
            valid=self.valid,
            reason=self.reason,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            cost_usd=self.cost_usd or 0.0,
        )


class PredictBatch(list):
    """The predictions of a batch (a list, in input order) plus what the batch did.

    Attributes:
        estimate: The cost estimate made before the batch.
        failures: ``(item, reason)`` for queries whose call failed (transport, bad file).
        stopped: ``"budget"`` when the cap stopped the batch early, else None.
        dry_run: True when nothing was sent (the list is then empty).
    """

    def __init__(self, items: Sequence[LmmPrediction] = (), *, estimate: CostEstimate | None = None, dry_run: bool = False) -> None:
        super().__init__(items)
        self.estimate = estimate or CostEstimate()
        self.failures: list[tuple[Any, str]] = []
        self.stopped: str | None = None
        self.dry_run = dry_run


# ----------------------------------------------------------------------------- schema and prompt

def predict_schema(classes: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of an answer; ``enum`` keeps structured-output servers inside the taxonomy."""
    names = list(classes)
    return {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": names},
            "top5": {"type": "array", "items": {"type": "string", "enum": names}},
            "confidence": {"type": "number"},
            "rationale": {"type": "string"},
        },
        "required": ["label", "top5", "confidence", "rationale"],
        "additionalProperties": False,
    }


def _class_list(classes: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in classes)


def predict_messages(
    demos: Sequence[tuple[EncodedImage, str]],
    query: EncodedImage,
    classes: Sequence[str],
    detail: str,
    template: PromptTemplate | None = None,
) -> list[dict[str, Any]]:
    """The chat messages: instruction, K (image, class) demonstrations, the query, the answer format."""
    template = template or load_prompt("predict")
    k = len(demos)
    content: list[dict[str, Any]] = [
        {"type": "text", "text": template.render("intro", classes=_class_list(classes), k=k)}
    ]
    for i, (image, label) in enumerate(demos, start=1):
        content.append({"type": "text", "text": template.render("demo", i=i, k=k, label=label)})
        content.append(image.part(detail))
    content.append({"type": "text", "text": template.render("query")})
    content.append(query.part(detail))
    content.append({"type": "text", "text": template.render("answer_format")})
    return [
        {"role": "system", "content": template.render("system")},
        {"role": "user", "content": content},
    ]


def estimate_predict(
    query_size: tuple[int, int],
    demo_sizes: Sequence[tuple[int, int]],
    classes: Sequence[str],
    settings: Settings,
    prices: PriceTable,
) -> CostEstimate:
    """Cost estimate of one prediction (first call only; a repair, when needed, costs about as much again)."""
    lmm = settings.lmm
    template = load_prompt("predict")
    k = len(demo_sizes)
    text = template.render("system") + template.render("intro", classes=_class_list(classes), k=k)
    text += "".join(template.render("demo", i=i, k=k, label=max(classes, key=len)) for i in range(1, k + 1))
    text += template.render("query") + template.render("answer_format")
    return chat_estimate(
        prices, lmm.vision_model, text=text, image_sizes=[query_size, *demo_sizes], detail=lmm.image_detail,
        max_side=lmm.image_max_side, tokens_out=int(template.numbers.get("output_tokens", 160)),
    )


# ----------------------------------------------------------------------------- one prediction

def _cost(prices: PriceTable, model: str, result: ChatResult) -> float | None:
    return 0.0 if result.cached else chat_cost(prices, model, result.tokens_in, result.tokens_out)


def predict_encoded(
    client: LmmClient,
    demos: Sequence[tuple[EncodedImage, str]],
    query: EncodedImage,
    classes: Sequence[str],
    settings: Settings,
    *,
    item: Any = None,
    prices: PriceTable | None = None,
    token: CancelToken | None = None,
) -> LmmPrediction:
    """Classify one encoded query from encoded demonstrations (one call, two with a repair).

    Raises:
        LabelError: If ``classes`` is empty.
        LmmError: Transport failures (after retries), rejected requests, missing model.
    """
    if not classes:
        raise LabelError("the library has no classes to choose from")
    lmm = settings.lmm
    prices = prices or PriceTable.load()
    template = load_prompt("predict")
    schema = predict_schema(classes)
    messages = predict_messages(demos, query, classes, lmm.image_detail, template)
    request = {"model": lmm.vision_model, "messages": messages}
    first = client.chat_structured(request, "classification", schema, enabled=lmm.structured_outputs, token=token)
    calls = [first]
    parsed: ParsedPrediction | None = None
    reason = ""
    repaired = False
    if first.refused:
        reason = f"the model declined: {first.refusal or first.finish_reason}"
    else:
        parsed = parse_prediction(first.text, classes)
        if parsed.label is None:
            # One repair: show the model its own answer and the allowed classes again.
            repaired = True
            shown = parsed.label_raw if parsed.label_raw is not None else first.text.strip()[:80]
            repair = {
                "model": lmm.vision_model,
                "messages": messages
                + [
                    {"role": "assistant", "content": first.text},
                    {"role": "user", "content": template.render("repair", answer=shown, classes=_class_list(classes))},
                ],
            }
            second = client.chat_structured(repair, "classification", schema, enabled=lmm.structured_outputs, token=token)
            calls.append(second)
            if second.refused:
                parsed = None
                reason = f"the model declined after a repair request: {second.refusal or second.finish_reason}"
            else:
                again = parse_prediction(second.text, classes)
                if again.label is None:
                    answer = again.label_raw if again.label_raw is not None else second.text.strip()[:80]
                    reason = f"answer {answer!r} is not one of the classes, also after a repair request"
                    parsed = None
                else:
                    parsed = again
                    reason = f"repaired: first answer {shown!r} was not a class"
    costs = [_cost(prices, lmm.vision_model, c) for c in calls]
    common = dict(
        item=item if item is not None else query.image_id,
        image_id=query.image_id,
        model=lmm.vision_model,
        prompt_version=template.id,
        demo_ids=[d.image_id for d, _ in demos if d.image_id is not None],
        demo_labels=[label for _, label in demos],
        tokens_in=sum(c.tokens_in for c in calls),
        tokens_out=sum(c.tokens_out for c in calls),
        cost_usd=None if any(c is None for c in costs) else sum(c for c in costs if c is not None),
        cached=all(c.cached for c in calls),
        repaired=repaired,
    )
    if parsed is None or parsed.label is None:
        return LmmPrediction(label=None, ranking=[], confidence=None, rationale="", valid=False, reason=reason, **common)
    return LmmPrediction(
        label=parsed.label,
        ranking=ranking_from(parsed.top5, parsed.confidence),
        confidence=parsed.confidence,
        rationale=parsed.rationale,
        valid=True,
        reason=reason,
        **common,
    )


def predict_one(
    client: LmmClient,
    demos: Sequence[Demo],
    query: ImageLike,
    classes: Sequence[str],
    settings: Settings,
    *,
    prices: PriceTable | None = None,
    token: CancelToken | None = None,
) -> LmmPrediction:
    """Classify one query image from plain demonstrations: read, crop, encode, ask.

    Args:
        client: The client.
        demos: ``(image, class)`` pairs; images as (H, W) uint8 arrays, paths or sources.
        query: The query image likewise.
        classes: The allowed class names.
        settings: All settings (``lmm.*``, ``max_pixels``).
        prices: The price table.
        token: Cancels retry waits.
    """
    side = settings.lmm.image_max_side
    encoded_demos = [(encode_source(image, side, max_pixels=settings.max_pixels), label) for image, label in demos]
    encoded_query = encode_source(query, side, max_pixels=settings.max_pixels)
    item = query.image_id if isinstance(query, ImageSource) else (None if isinstance(query, np.ndarray) else query)
    return predict_encoded(client, encoded_demos, encoded_query, classes, settings, item=item, prices=prices, token=token)


# ----------------------------------------------------------------------------- batches through the classifier

@dataclass(frozen=True)
class PredictQuery:
    """One query for the vision model: the item as the caller names it, its image, its demonstrations."""

    item: Any
    source: ImageSource
    demos: list[tuple[ImageSource, str]]


def _demonstrations(
    store: Store, classifier: DemonstrationSource, item: Any, source: ImageSource, settings: Settings
) -> list[tuple[ImageSource, str]]:
    """The K demonstrations of one query through the classifier, never the query itself."""
    from nmid_desktop.lmm.images import source_from_record

    k = settings.k
    if source.image_id is not None:
        vector = classifier.embed_image(source.image_id)
        found = classifier.similar(vector, k, settings.strategy, exclude_ids=[source.image_id])
    else:
        vector = classifier.embed_file(Path(source.path))
        found = classifier.similar(vector, k, settings.strategy)
    demos: list[tuple[ImageSource, str]] = []
    for demo in found:
        if demo.image_id == source.image_id:
            continue
        record = store.get_image(demo.image_id)
        demos.append((source_from_record(record, crop_data_bar=settings.crop_data_bar), demo.label))
        if len(demos) == k:
            break
    return demos


def predict_images(
    store: Store,
    classifier: DemonstrationSource,
    paths_or_ids: Sequence[Any],
    settings: Settings,
    *,
    dry_run: bool = False,
    client: LmmClient | None = None,
    token: CancelToken | None = None,
    prices: PriceTable | None = None,
) -> Job[PredictBatch]:
    """Classify images with the vision model from retrieved demonstrations (a job).

    For each query the classifier embeds it and retrieves ``settings.k``
    demonstrations with ``settings.strategy``; the first progress report after
    retrieval carries the cost estimate (``data``). Predictions of library images
    are stored (valid or not) with model, prompt version, demo ids, tokens and
    cost, from this generator's thread. Labels are not changed: the caller decides
    (with ``--predictor both`` the local answer stands when the model's is invalid).

    Args:
        store: The library.
        classifier: ``nmid_desktop.predict.service.Classifier`` (``embed_image``,
            ``embed_file``, ``similar(vector, k, strategy)``).
        paths_or_ids: Library image ids and/or file paths.
        settings: All settings.
        dry_run: Retrieve and estimate only; send nothing (the returned list is empty).
        client: The client (default: one for the configured endpoint).
        token: Cancels between calls.
        prices: The price table.

    Returns:
        A :class:`PredictBatch`: one :class:`LmmPrediction` per query that got an
        answer, in input order; failed calls are in ``failures``.

    Raises:
        NoEndpointError: When offline (not in a dry run).
        BudgetExceeded: When the estimate passes the budget.
        ModelUnavailableError: Retired or unknown vision model.
    """
    from nmid_desktop.lmm.describe import resolve_items

    if client is None and not dry_run:
        require_endpoint(settings.lmm)  # offline: say so before any work
    if not store.classes():
        raise LabelError("the library has no classes: label some images first")
    sources = resolve_items(store, paths_or_ids, settings)
    queries: list[PredictQuery] = []
    for i, (item, source) in enumerate(zip(paths_or_ids, sources, strict=True)):
        queries.append(PredictQuery(item, source, _demonstrations(store, classifier, item, source, settings)))
        yield Progress(i + 1, len(sources), f"retrieved demonstrations for {item}")
    return (yield from predict_queries(store, queries, settings, dry_run=dry_run, client=client, token=token, prices=prices))


def predict_queries(
    store: Store,
    queries: Sequence[PredictQuery],
    settings: Settings,
    *,
    dry_run: bool = False,
    client: LmmClient | None = None,
    token: CancelToken | None = None,
    prices: PriceTable | None = None,
) -> Job[PredictBatch]:
    """Ask the vision model about queries whose demonstrations are already chosen (a job).

    The paid part of :func:`predict_images`, and what the window's "Ask model" runs with the
    demonstrations it shows: estimate (the first progress report's ``data``), budget check,
    model check, the calls, usage and the stored predictions, all on the one paid-call path
    (:mod:`nmid_desktop.lmm.paid_batch`).

    Returns:
        A :class:`PredictBatch` (failed calls in ``failures``; ``stopped`` when the budget stopped it).

    Raises:
        NoEndpointError: When offline (not in a dry run).
        BudgetExceeded: When the estimate passes the budget.
        ModelUnavailableError: Retired vision model.
        LmmError: A fatal endpoint error (bad key), after the calls in flight ended.
    """
    lmm = settings.lmm
    if client is None and not dry_run:
        require_endpoint(lmm)
    prices = prices or PriceTable.load()
    classes = [c.name for c in store.classes()]
    if not classes:
        raise LabelError("the library has no classes: label some images first")
    per_item = [
        estimate_predict(source_size(q.source), [source_size(d) for d, _ in q.demos], classes, settings, prices)
        for q in queries
    ]
    total = CostEstimate()
    for estimate in per_item:
        total.add(estimate)
    batch = PredictBatch(estimate=total, dry_run=dry_run)
    yield Progress(0, len(queries), f"estimate: {total.summary()}", data=total)
    if dry_run or not queries:
        return batch
    spent = store.total_cost()
    with paid_session(lmm, total, spent, model_setting="lmm.vision_model", client=client) as session:

        def stop_for_budget() -> None:
            batch.stopped = "budget"

        def work(query: PredictQuery) -> LmmPrediction:
            side = lmm.image_max_side
            demos = [(encode_source(s, side, max_pixels=settings.max_pixels), label) for s, label in query.demos]
            encoded = encode_source(query.source, side, max_pixels=settings.max_pixels)
            return predict_encoded(session.client, demos, encoded, classes, settings, item=query.item, prices=prices, token=token)

        def keep(_index: int, prediction: LmmPrediction) -> tuple[LmmPrediction, str]:
            record_paid_call(store, "predict", prediction, cost_usd=prediction.cost_usd,
                             images=len(prediction.demo_ids) + 1)
            if prediction.image_id is not None:
                prediction = replace(prediction, prediction_id=store.add_prediction(prediction.record()))
            text = prediction.label if prediction.valid else f"invalid ({prediction.reason})"
            return prediction, f"{prediction.item}: {text}"

        found = yield from paid_calls(
            queries, work, [e.cost_usd for e in per_item], lmm=lmm, spent=spent, token=token,
            failures=batch.failures, failure_key=lambda i: queries[i].item, on_budget_stop=stop_for_budget,
            on_result=keep,
        )
    batch.extend(found[i] for i in sorted(found))
    return batch


__all__ = [
    "BudgetExceeded",
    "Demo",
    "LmmPrediction",
    "PredictBatch",
    "PredictQuery",
    "estimate_predict",
    "predict_encoded",
    "predict_images",
    "predict_messages",
    "predict_one",
    "predict_queries",
    "predict_schema",
]
