"""Synthetic micrographs from structured descriptions, step 5 of GDL-NMID.

The image model turns an image's stored question-answer rows into a prompt and
draws N new images (``/v1/images/generations``, returned as ``b64_json``). They
enter the library flagged synthetic, linked to their source image, labelled with
the source's class (source ``synthetic``) and pending review: the paper's authors
discarded by hand the images that disagree with the real one, so here nothing
synthetic is trusted before an expert accepts it. The store only lets accepted
synthetic images into training and demonstrations, and never into a test split.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmid_desktop.core.config import Settings
from nmid_desktop.core.errors import ImageError, NmidError
from nmid_desktop.core.jobs import CancelToken, Job, Progress
from nmid_desktop.core.store.base import DescriptionRecord, ImageFilter, Store
from nmid_desktop.lmm.client import LmmClient, MalformedResponseError, require_endpoint
from nmid_desktop.lmm.cost import CostEstimate, PriceTable, image_estimate
from nmid_desktop.lmm.images import GeneratedImage, check_generated_image
from nmid_desktop.lmm.paid_batch import paid_session
from nmid_desktop.lmm.parsing import REASONING
from nmid_desktop.lmm.questions import PromptTemplate, load_prompt
from nmid_desktop.lmm.usage import record_paid_call

MAX_PER_CALL = 10  # the images API's own limit on n
DEFAULT_SIZE = "1024x1024"


@dataclass
class SynthesisResult:
    """What a synthesis job made.

    Attributes:
        source_image_id: The real image the prompt came from.
        image_ids: New library images (synthetic, pending review).
        prompt: The prompt sent.
        prompt_version: ``synthesize-v1``.
        estimate: The cost estimate made first.
        cost_usd: Known cost of the calls (None when the model has no price).
        duplicates: Images the model returned twice (not added again).
        rejected: Why each image that failed the checks (format, size, damage) was not stored.
        dry_run: True when nothing was sent.
    """

    source_image_id: int
    image_ids: list[int] = field(default_factory=list)
    prompt: str = ""
    prompt_version: str = ""
    estimate: CostEstimate = field(default_factory=CostEstimate)
    cost_usd: float | None = 0.0
    duplicates: int = 0
    rejected: list[str] = field(default_factory=list)
    dry_run: bool = False


def synthesis_prompt(description: DescriptionRecord, label: str, domain: str, template: PromptTemplate | None = None) -> str:
    """The image prompt: the class, the domain, and the description's answers (reasoning left out)."""
    template = template or load_prompt("synthesize")
    limit = int(template.numbers.get("max_chars", 3800))
    head = template.render("prompt", domain=domain, label=label, features="")
    features: list[str] = []
    used = len(head)
    for row in description.rows:
        if row.question == REASONING or not row.answer.strip():
            continue
        line = template.render("feature", group=row.group, question=row.question, answer=row.answer.strip())
        if used + len(line) + 1 > limit:
            break  # the images API caps prompt length; the first groups matter most
        features.append(line)
        used += len(line) + 1
    return template.render("prompt", domain=domain, label=label, features="\n".join(features))


def _latest_description(store: Store, image_id: int) -> DescriptionRecord:
    descriptions = store.descriptions(image_id)
    if not descriptions:
        raise NmidError(f"image {image_id} has no description yet: run `nmid describe {image_id}` first")
    return descriptions[0]


def _domain(store: Store, description: DescriptionRecord) -> str:
    from nmid_desktop.lmm.describe import library_question_set

    # The description's prompt version names its question set: "describe-v1/<set id>/<digest>".
    parts = description.prompt_version.split("/")
    try:
        qs = library_question_set(store, parts[1] if len(parts) >= 2 else None)
    except NmidError:
        return "electron micrograph"
    return qs.domain


def _request(model: str, prompt: str, n: int, size: str, quality: str | None) -> dict[str, Any]:
    request: dict[str, Any] = {"model": model, "prompt": prompt, "n": n, "size": size}
    # GPT Image models always answer in base64 and reject response_format; older and
    # compatible servers need it to avoid answering with URLs.
    if not model.startswith("gpt-image"):
        request["response_format"] = "b64_json"
    if quality:
        request["quality"] = quality
    return request


def synthesize_images(
    store: Store,
    image_id: int,
    n: int,
    settings: Settings,
    *,
    size: str = DEFAULT_SIZE,
    quality: str | None = None,
    client: LmmClient | None = None,
    dry_run: bool = False,
    token: CancelToken | None = None,
    prices: PriceTable | None = None,
) -> Job[SynthesisResult]:
    """Make ``n`` synthetic images from an image's latest description (a job).

    Args:
        store: The library.
        image_id: A real, labelled, described image.
        n: How many images to make (1-100).
        settings: All settings (``lmm.image_model``, ``lmm.budget_usd``).
        size: ``WIDTHxHEIGHT`` as the images API takes it.
        quality: ``low``/``medium``/``high`` for GPT Image models; None leaves the server's default.
        client: The client (default: one for the configured endpoint).
        dry_run: Estimate only.
        token: Cancels between calls.
        prices: The price table.

    Returns:
        A :class:`SynthesisResult` with the new image ids.

    Raises:
        NmidError: The image is synthetic, unlabelled or not described.
        BudgetExceeded: The estimate passes the budget.
        ModelUnavailableError: Retired or unknown image model.
    """
    if not 1 <= n <= 100:
        raise NmidError(f"the number of images must be between 1 and 100, not {n}")
    lmm = settings.lmm
    if client is None and not dry_run:
        require_endpoint(lmm)  # offline: say so before any work
    record = store.get_image(image_id)
    if record.synthetic:
        raise NmidError(f"image {image_id} is itself synthetic: make synthetic images from real ones only")
    if not record.label:
        raise NmidError(f"image {image_id} has no label: synthetic images take the label of their source")
    description = _latest_description(store, image_id)
    template = load_prompt("synthesize")
    prompt = synthesis_prompt(description, record.label, _domain(store, description), template)
    prices = prices or PriceTable.load()
    calls = [min(MAX_PER_CALL, n - start) for start in range(0, n, MAX_PER_CALL)]
    total = CostEstimate()
    for count in calls:
        total.add(image_estimate(prices, lmm.image_model, prompt=prompt, n=count, quality=quality))
    result = SynthesisResult(image_id, prompt=prompt, prompt_version=template.id, estimate=total, dry_run=dry_run)
    yield Progress(0, n, f"estimate: {total.summary()}", data=total)
    if dry_run:
        return result
    with paid_session(lmm, total, store.total_cost(), model_setting="lmm.image_model", client=client) as session:
        price = prices.image(lmm.image_model)
        made_before = store.count_images(ImageFilter(synthetic=True))
        cost: float | None = 0.0
        with tempfile.TemporaryDirectory(prefix="nmid-synth-") as tmp:
            round_no = 0
            while len(result.image_ids) + result.duplicates + len(result.rejected) < n:
                if token is not None:
                    token.raise_if_cancelled()
                want = min(MAX_PER_CALL, n - len(result.image_ids) - result.duplicates - len(result.rejected))
                request = _request(lmm.image_model, prompt, want, size, quality)
                # The salt makes "n more images" a new cache key, while a rerun after a crash
                # (same library state) finds the images it already paid for.
                salt = f":{image_id}:{made_before}:{round_no}"
                answer = session.client.generate_images(request, cache_salt=salt, token=token)
                round_no += 1
                if not answer.images:
                    raise MalformedResponseError(f"{session.client.endpoint.base_url} returned no images")
                call_cost = None if price is None else (0.0 if answer.cached else price.cost(len(answer.images), quality, answer.tokens_in))
                record_paid_call(store, "synthesize", answer, cost_usd=call_cost, images=len(answer.images),
                                 model=lmm.image_model)
                cost = None if cost is None or call_cost is None else cost + call_cost
                for data in answer.images[:want]:
                    try:
                        checked = check_generated_image(data, size)
                    except ImageError as exc:
                        result.rejected.append(exc.reason)
                        continue
                    new_id, created = _add(store, Path(tmp), data, checked, record.id, lmm.image_model)
                    if not created:
                        result.duplicates += 1
                        continue
                    store.set_label(
                        new_id, record.label, source="synthetic", actor="nmid synthesize", model=lmm.image_model,
                        prompt_version=template.id, review="pending",
                    )
                    result.image_ids.append(new_id)
                yield Progress(len(result.image_ids), n, f"{len(result.image_ids)} of {n} images made")
        result.cost_usd = cost
        return result


def _add(
    store: Store, folder: Path, data: bytes, checked: GeneratedImage, source_id: int, model: str
) -> tuple[int, bool]:
    """Write one checked generated image to a temporary file and add it (copied) to the library."""
    width, height = checked.width, checked.height
    sha = hashlib.sha256(data).hexdigest()
    path = folder / f"synthetic-{source_id}-{sha[:12]}{checked.suffix}"
    path.write_bytes(data)
    return store.add_image(
        path, sha256=sha, page=0, n_pages=1, width=width, height=height, dtype="uint8",
        copy=True, synthetic=True, source_image_id=source_id,
        original_path=f"synthetic from image {source_id} by {model}",
    )
