from __future__ import annotations

import pytest

from nmid_desktop.core.errors import Cancelled
from nmid_desktop.core.jobs import CancelToken, Progress, run_job


def _counting_job(n: int, log: list[str]):
    try:
        for i in range(n):
            yield Progress(i, n, f"step {i}")
            log.append(f"did {i}")
        return n * 10
    finally:
        log.append("cleanup")


def test_run_job_returns_value_and_reports_progress() -> None:
    log: list[str] = []
    seen: list[Progress] = []
    assert run_job(_counting_job(3, log), seen.append) == 30
    assert [p.done for p in seen] == [0, 1, 2]
    assert seen[1].fraction == pytest.approx(1 / 3)
    assert log[-1] == "cleanup"


def test_cancel_closes_generator_at_a_yield_and_runs_cleanup() -> None:
    log: list[str] = []
    token = CancelToken()

    def on_progress(p: Progress) -> None:
        if p.done == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        run_job(_counting_job(5, log), on_progress, token)
    # The generator is closed at the yield that announced step 1: its body never runs.
    assert log == ["did 0", "cleanup"]


def test_progress_fraction_unknown_total() -> None:
    assert Progress(3, 0).fraction is None
    assert Progress(5, 4).fraction == 1.0


def test_token_raise_if_cancelled() -> None:
    token = CancelToken()
    token.raise_if_cancelled()
    token.cancel()
    with pytest.raises(Cancelled):
        token.raise_if_cancelled()
