"""The one path of every paid model call: estimate, budget, client, model check, usage, fatal errors.

Every job that pays for model calls (describe, predict, synthesize, question generation, the
model's evaluation, and the window's single "Ask model") does the same things around its calls:

1. it estimates the whole job and reports the estimate (its first progress line);
2. :func:`paid_session` refuses the job when the estimate would pass the budget, opens the client
   unless the caller lent one (and then closes only what it opened), and checks that the configured
   model is served before the first paid call;
3. :func:`paid_calls` runs the calls inside the budget (:class:`~nmid_desktop.lmm.cost.BudgetGuard`)
   with :func:`is_fatal` as the one rule for which failure stops the job;
4. each answer's cost is recorded with :func:`nmid_desktop.lmm.usage.record_paid_call`.

``describe_images`` and ``predict_images`` differ only in what one call does and in what is
stored from its result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from nmid_desktop.core.config import LmmSettings
from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.jobs import CancelToken, Job, Progress
from nmid_desktop.lmm.client import LmmClient, LmmError, run_batch
from nmid_desktop.lmm.cost import BudgetGuard, CostEstimate, check_budget

T = TypeVar("T")
R = TypeVar("R")


def is_fatal(error: BaseException) -> bool:
    """The one rule for every paid batch: which failed call stops the whole batch.

    Fatal: an endpoint error that every later call would repeat (a bad key, a retired model,
    an endpoint that is not there) and any error that is not one of ours (a bug). Any other
    failure (one refused or malformed answer, a timeout) fails that item only.
    """
    if isinstance(error, LmmError):
        return error.fatal
    return not isinstance(error, NmidError)


@dataclass(frozen=True)
class PaidSession:
    """What a paid job holds while it calls: the client and what the library had spent before."""

    client: LmmClient
    spent: float


@contextmanager
def paid_session(
    lmm: LmmSettings,
    total: CostEstimate,
    spent: float,
    *,
    model_setting: str,
    client: LmmClient | None = None,
) -> Iterator[PaidSession]:
    """Open the way for a job's paid calls: budget check, client ownership, model check.

    Args:
        lmm: Endpoint settings.
        total: The job's whole estimate.
        spent: What the library has spent already.
        model_setting: The setting naming the model the calls use: ``lmm.vision_model``,
            ``lmm.image_model`` or ``lmm.text_model`` (checked against the endpoint's list).
        client: A client the caller owns (kept open); None: one for the configured endpoint,
            closed when the block ends.

    Raises:
        BudgetExceeded: When ``spent`` plus the estimate would pass ``lmm.budget_usd``.
        ModelUnavailableError: When the endpoint does not serve the model, or it is retired.
    """
    from nmid_desktop.lmm.catalog import require_model

    check_budget(total, spent, lmm.budget_usd)
    own_client = client is None
    session_client = client if client is not None else LmmClient.from_settings(lmm)
    try:
        model = getattr(lmm, model_setting.removeprefix("lmm."))
        require_model(session_client, model_setting, model)
        yield PaidSession(session_client, spent)
    finally:
        if own_client:
            session_client.close()


def paid_calls(
    items: Sequence[T],
    work: Callable[[T], R],
    costs: Sequence[float],
    *,
    lmm: LmmSettings,
    spent: float,
    token: CancelToken | None,
    failures: list[tuple[Any, str]],
    failure_key: Callable[[int], Any],
    on_budget_stop: Callable[[], None],
    on_result: Callable[[int, R], tuple[R, str]],
) -> Job[dict[int, R]]:
    """Run ``work`` over ``items`` concurrently inside the budget; yield progress per finished call.

    Args:
        items: One entry per paid call.
        work: The call, run in a worker thread; its result has a ``cost_usd`` attribute.
        costs: The estimated cost of each call, reserved against the budget before it starts.
        lmm: Endpoint settings (``budget_usd``, ``max_concurrency``).
        spent: What the library has spent already.
        token: Stops new calls when cancelled; finished results are kept.
        failures: Receives ``(failure_key(index), reason)`` for every failed call.
        failure_key: Names a failed item for the report.
        on_budget_stop: Called once the budget refuses the next call.
        on_result: Called in the job's thread with each successful result (store it here);
            returns the result to keep and the progress line.

    Returns:
        Index -> kept result, for the calls that succeeded.

    Raises:
        LmmError: The first fatal error (bad key, retired model), after the calls in flight ended
            (see :func:`is_fatal`; answers that arrived are kept: ``on_result`` stored them).
    """
    guard = BudgetGuard(lmm.budget_usd, spent)
    fatal: list[BaseException] = []
    found: dict[int, R] = {}

    def admit(index: int) -> bool:
        if fatal:
            return False
        if guard.reserve(costs[index]):
            return True
        on_budget_stop()
        return False

    done = 0
    with closing(run_batch(items, work, max_workers=lmm.max_concurrency, token=token, admit=admit)) as outcomes:
        for outcome in outcomes:
            done += 1
            estimate_usd = costs[outcome.index]
            if outcome.error is not None:
                guard.settle(estimate_usd, 0.0)
                error = outcome.error
                if is_fatal(error):
                    # No new call starts; the calls in flight end and their answers are kept.
                    fatal.append(error)
                    yield Progress(done, len(items), f"stopping: {error}")
                    continue
                failures.append((failure_key(outcome.index), str(error)))
                yield Progress(done, len(items), f"failed: {error}")
                continue
            value = outcome.value
            guard.settle(estimate_usd, getattr(value, "cost_usd", None) or 0.0)
            kept, text = on_result(outcome.index, value)  # type: ignore[arg-type]
            found[outcome.index] = kept
            yield Progress(done, len(items), text, data=kept)
    if fatal:
        raise fatal[0]
    return found
