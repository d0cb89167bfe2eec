"""Structured descriptions (visual question answering), step 4 of GDL-NMID.

The vision model gets one image (data bar cut off) and a question set, and answers
group by group: for each group it first reasons step by step about what it sees,
then answers that group's questions. Everything is asked in one request, so the
image is paid for once and later groups can build on earlier observations (the
chain-of-thought style of the paper). The answer is JSON (structured outputs where
the endpoint has them), parsed into ``(group, question, answer)`` rows; each
group's reasoning is kept as a row too (question ``(reasoning)``), for the expert
who reviews the description. Rows are stored per image with the model name and
the prompt version ``describe-v1/<question set>-vN/<digest>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmid_desktop.core.config import Settings
from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.jobs import CancelToken, Job, Progress
from nmid_desktop.core.store.base import DescriptionRecord, DescriptionRow, Store
from nmid_desktop.lmm.client import LmmClient, require_endpoint
from nmid_desktop.lmm.cost import CostEstimate, PriceTable, chat_cost, chat_estimate
from nmid_desktop.lmm.images import EncodedImage, ImageSource, encode_source, source_size
from nmid_desktop.lmm.paid_batch import paid_calls, paid_session
from nmid_desktop.lmm.parsing import REASONING, parse_description
from nmid_desktop.lmm.questions import PromptTemplate, QuestionSet, load_prompt, load_question_set
from nmid_desktop.lmm.usage import record_paid_call

QUESTION_SET_META = "lmm.question_set"
"""Library metadata key naming the library's question set (``name``, ``name-vN`` or a path)."""


def describe_schema() -> dict[str, Any]:
    """The JSON schema of a description answer (strict structured outputs)."""
    return {
        "type": "object",
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "group": {"type": "integer"},
                        "reasoning": {"type": "string"},
                        "answers": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"question": {"type": "integer"}, "answer": {"type": "string"}},
                                "required": ["question", "answer"],
                                "additionalProperties": False,
                            },
                        },
                    },
                    "required": ["group", "reasoning", "answers"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["groups"],
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class Description:
    """The outcome of describing one image.

    Attributes:
        item: What was asked about (an image id or a path).
        image_id: Library id, or None for a file outside the library (then nothing is stored).
        rows: Parsed rows, in question-set order (empty when ``error``).
        model: The vision model.
        prompt_version: ``describe-v1/<set id>/<digest>``.
        tokens_in: Input tokens reported by the server.
        tokens_out: Output tokens reported.
        cost_usd: Cost of the call, None when the model has no price (0 when cached).
        cached: Answered from the disk cache.
        error: Why the answer is unusable (refusal, nothing parseable), "" when fine.
        description_id: The stored row's id, when stored.
    """

    item: Any
    image_id: int | None
    rows: list[DescriptionRow]
    model: str
    prompt_version: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = 0.0
    cached: bool = False
    error: str = ""
    description_id: int | None = None

    @property
    def ok(self) -> bool:
        """True when the description has answers."""
        return not self.error

    @property
    def answers(self) -> list[DescriptionRow]:
        """Rows without the reasoning rows."""
        return [row for row in self.rows if row.question != REASONING]


@dataclass
class DescribeBatch:
    """The outcome of a describe job.

    Attributes:
        descriptions: One per image that got an answer (usable or not), in input order.
        failures: ``(item, reason)`` for images whose call failed (transport, bad file).
        estimate: The cost estimate made before the batch.
        stopped: ``"budget"`` when the cap stopped the batch early, else None.
        dry_run: True when nothing was sent.
    """

    descriptions: list[Description] = field(default_factory=list)
    failures: list[tuple[Any, str]] = field(default_factory=list)
    estimate: CostEstimate = field(default_factory=CostEstimate)
    stopped: str | None = None
    dry_run: bool = False


def prompt_version(template: PromptTemplate, qs: QuestionSet) -> str:
    """``describe-v1/<set id>/<digest>``: names the template, the set and its exact content."""
    return f"{template.id}/{qs.id}/{qs.digest}"


def describe_request(image: EncodedImage, qs: QuestionSet, model: str, detail: str) -> tuple[dict[str, Any], PromptTemplate]:
    """The chat request (without ``response_format``) that describes one image."""
    template = load_prompt("describe")
    text = template.render("instruction", domain=qs.domain, questions=qs.numbered())
    text += "\n\n" + template.render("answer_format")
    request = {
        "model": model,
        "messages": [
            {"role": "system", "content": template.render("system")},
            {"role": "user", "content": [{"type": "text", "text": text}, image.part(detail)]},
        ],
    }
    return request, template


def estimate_describe(size: tuple[int, int], qs: QuestionSet, settings: Settings, prices: PriceTable) -> CostEstimate:
    """Cost estimate of describing one image of ``size`` (width, height) before downscaling."""
    lmm = settings.lmm
    template = load_prompt("describe")
    text = (
        template.render("system")
        + template.render("instruction", domain=qs.domain, questions=qs.numbered())
        + template.render("answer_format")
    )
    tokens_out = int(
        template.numbers.get("output_tokens_per_question", 45) * qs.n_questions
        + template.numbers.get("output_tokens_per_group", 60) * len(qs.groups)
    )
    return chat_estimate(
        prices, lmm.vision_model, text=text, image_sizes=[size], detail=lmm.image_detail,
        max_side=lmm.image_max_side, tokens_out=tokens_out,
    )


def describe_encoded(
    client: LmmClient,
    image: EncodedImage,
    qs: QuestionSet,
    settings: Settings,
    *,
    item: Any = None,
    prices: PriceTable | None = None,
    token: CancelToken | None = None,
) -> Description:
    """Describe one encoded image (one API call, or none on a cache hit).

    A refusal or an answer without a single parseable question gives a
    :class:`Description` with ``error`` set (the call was still made and paid for);
    transport failures raise :class:`~nmid_desktop.lmm.client.LmmError`.
    """
    lmm = settings.lmm
    request, template = describe_request(image, qs, lmm.vision_model, lmm.image_detail)
    result = client.chat_structured(
        request, "structured_description", describe_schema(), enabled=lmm.structured_outputs,
        setting="lmm.vision_model", token=token,
    )
    prices = prices or PriceTable.load()
    cost = 0.0 if result.cached else chat_cost(prices, lmm.vision_model, result.tokens_in, result.tokens_out)
    common = dict(
        item=item if item is not None else image.image_id,
        image_id=image.image_id,
        model=lmm.vision_model,
        prompt_version=prompt_version(template, qs),
        tokens_in=result.tokens_in,
        tokens_out=result.tokens_out,
        cost_usd=cost,
        cached=result.cached,
    )
    if result.refused:
        return Description(rows=[], error=f"the model declined: {result.refusal or result.finish_reason}", **common)
    rows = parse_description(result.text, qs.groups)
    answered = sum(1 for row in rows if row.question != REASONING)
    if answered == 0:
        return Description(rows=[], error="no answers could be read from the model's reply", **common)
    return Description(rows=rows, **common)


def library_question_set(store: Store | None, spec: str | Path | None = None) -> QuestionSet:
    """The question set to use: ``spec`` if given, else the library's choice, else the built-in one."""
    root = store.root if store is not None else None
    if spec is None and store is not None:
        spec = store.get_meta(QUESTION_SET_META)
    return load_question_set(spec, root)


def resolve_items(store: Store | None, items: Sequence[Any], settings: Settings) -> list[ImageSource]:
    """Image ids and paths as :class:`ImageSource` (a path already in the library becomes that image).

    Raises:
        LibraryError: For an unknown image id.
        ImageError: For an unreadable file.
    """
    from nmid_desktop.lmm.images import source_from_path, source_from_record

    sources: list[ImageSource] = []
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit() and not Path(item).exists()):
            if store is None:
                raise NmidError(f"image id {item} needs a library")
            sources.append(source_from_record(store.get_image(int(item)), crop_data_bar=settings.crop_data_bar))
            continue
        path = Path(item)
        record = _find_in_library(store, path) if store is not None else None
        if record is not None:
            sources.append(source_from_record(record, crop_data_bar=settings.crop_data_bar))
        else:
            sources.append(source_from_path(path, crop_data_bar=settings.crop_data_bar, max_pixels=settings.max_pixels))
    return sources


def _find_in_library(store: Store, path: Path) -> Any:
    import hashlib

    if not path.is_file():
        return None  # probe_image reports the missing file with a clear message
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return store.find_image(digest.hexdigest(), 0)


def describe_images(
    store: Store | None,
    items: Sequence[Any],
    settings: Settings,
    *,
    question_set: QuestionSet | str | Path | None = None,
    client: LmmClient | None = None,
    dry_run: bool = False,
    token: CancelToken | None = None,
    prices: PriceTable | None = None,
) -> Job[DescribeBatch]:
    """Describe images with the vision model and store the rows (a job).

    The first progress report carries the cost estimate (``data``). The batch is
    refused when spending so far plus the estimate passes ``lmm.budget_usd``, and
    stopped early when actual spending would. Finished descriptions are stored at
    once, from this generator's thread; a cancel or a fatal error (bad key, missing
    model) keeps them.

    Args:
        store: The library (None: describe files only, store nothing).
        items: Library image ids and/or file paths.
        settings: All settings (``lmm``, ``crop_data_bar``, ``max_pixels``).
        question_set: A set, or its name/path; default: the library's, else the built-in one.
        client: The client (default: one for the configured endpoint).
        dry_run: Only estimate; send nothing.
        token: Cancels between calls and during retry waits.
        prices: The price table (default: the shipped one plus the user's).

    Returns:
        A :class:`DescribeBatch`.

    Raises:
        NoEndpointError: When offline (not in a dry run).
        BudgetExceeded: When the estimate passes the budget.
        ModelUnavailableError: Retired or unknown vision model.
    """
    lmm = settings.lmm
    if client is None and not dry_run:
        require_endpoint(lmm)  # offline: say so before any work
    qs = question_set if isinstance(question_set, QuestionSet) else library_question_set(store, question_set)
    prices = prices or PriceTable.load()
    sources = resolve_items(store, items, settings)
    per_item = [estimate_describe(source_size(s), qs, settings, prices) for s in sources]
    total = CostEstimate()
    for estimate in per_item:
        total.add(estimate)
    batch = DescribeBatch(estimate=total, dry_run=dry_run)
    yield Progress(0, len(sources), f"estimate: {total.summary()}", data=total)
    if dry_run or not sources:
        return batch
    spent = store.total_cost() if store is not None else 0.0
    with paid_session(lmm, total, spent, model_setting="lmm.vision_model", client=client) as session:

        def stop_for_budget() -> None:
            batch.stopped = "budget"

        def work(source: ImageSource) -> Description:
            encoded = encode_source(source, lmm.image_max_side, max_pixels=settings.max_pixels)
            item = source.image_id if source.image_id is not None else source.path
            return describe_encoded(session.client, encoded, qs, settings, item=item, prices=prices, token=token)

        def keep(index: int, description: Description) -> tuple[Description, str]:
            source = sources[index]
            if store is not None:
                record_paid_call(store, "describe", description, cost_usd=description.cost_usd, images=1)
                if description.ok and source.image_id is not None:
                    stored_id = store.add_description(
                        DescriptionRecord(source.image_id, description.model, description.prompt_version, description.rows)
                    )
                    description = _with_id(description, stored_id)
            return description, _progress_text(description)

        found = yield from paid_calls(
            sources, work, [e.cost_usd for e in per_item], lmm=lmm, spent=spent, token=token,
            failures=batch.failures, failure_key=lambda i: items[i], on_budget_stop=stop_for_budget, on_result=keep,
        )
    batch.descriptions = [found[i] for i in sorted(found)]
    return batch


def _with_id(description: Description, stored_id: int) -> Description:
    from dataclasses import replace

    return replace(description, description_id=stored_id)


def _progress_text(description: Description) -> str:
    where = f"image {description.image_id}" if description.image_id is not None else str(description.item)
    if description.error:
        return f"{where}: {description.error}"
    return f"{where}: {len(description.answers)} answers"
