"""What a paid call cost, recorded once: every describe, predict, synthesize and question call uses this."""

from __future__ import annotations

from typing import Protocol

from nmid_desktop.core.store import Store


class PaidAnswer(Protocol):
    """What every model answer carries about its own cost."""

    @property
    def model(self) -> str: ...

    @property
    def tokens_in(self) -> int: ...

    @property
    def tokens_out(self) -> int: ...

    @property
    def cached(self) -> bool: ...


def record_paid_call(
    store: Store,
    kind: str,
    answer: PaidAnswer,
    *,
    cost_usd: float | None,
    images: int = 0,
    model: str | None = None,
) -> None:
    """Add one call to the library's usage (the budget and the status bar read it).

    Answers served from the cache cost nothing and are not recorded again.

    Args:
        store: The library.
        kind: ``describe``, ``predict``, ``synthesize`` or ``questions``.
        answer: The call's answer (model, tokens, cached).
        cost_usd: Its cost (None when the price table has no entry: recorded as 0).
        images: Images sent or received.
        model: The model to record when the answer does not name it (image generation).
    """
    if answer.cached:
        return
    store.record_usage(
        kind=kind, model=model or answer.model, tokens_in=answer.tokens_in, tokens_out=answer.tokens_out,
        cost_usd=cost_usd or 0.0, images=images,
    )
