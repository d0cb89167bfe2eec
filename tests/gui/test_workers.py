"""JobManager: jobs run off the GUI thread, report progress, supersede, fail and cancel cleanly."""

from __future__ import annotations

import threading
import time

import pytest
from PySide6.QtCore import QThread

from nmid_desktop.core.errors import LibraryError
from nmid_desktop.core.jobs import CancelToken, Progress
from nmid_desktop.qt.workers import JobManager


@pytest.fixture
def manager(qapp):
    mgr = JobManager()
    yield mgr
    assert mgr.shutdown(timeout_s=10)
    assert mgr.thread_count() == 0


def _counting_job(n: int, delay: float = 0.0, seen: list | None = None):
    def factory(token: CancelToken):
        def job():
            if seen is not None:
                seen.append(threading.get_ident())
            for i in range(n):
                if delay:
                    time.sleep(delay)
                yield Progress(i + 1, n, f"step {i + 1}", data={"i": i})
            return n * 10

        return job()

    return factory


def test_job_runs_in_another_thread_and_reports(manager, qtbot):
    seen: list[int] = []
    handle = manager.start("count", _counting_job(5, seen=seen))
    progress: list[Progress] = []
    handle.progress_changed.connect(progress.append)
    with qtbot.waitSignal(handle.finished, timeout=5000) as blocker:
        pass
    assert blocker.args == [50]
    assert handle.outcome == "finished" and handle.result == 50
    assert seen and seen[0] != threading.get_ident()
    assert [p.done for p in progress] == [1, 2, 3, 4, 5]
    assert not manager.busy


def test_failure_becomes_a_message_and_the_thread_ends(manager, qtbot):
    def factory(token):
        def job():
            yield Progress(0, 1, "start")
            raise LibraryError("the library is locked")

        return job()

    handle = manager.start("bad", factory)
    with qtbot.waitSignal(handle.failed, timeout=5000) as blocker:
        pass
    assert blocker.args == ["the library is locked"]
    other = manager.start("crash", lambda token: 1 / 0)
    with qtbot.waitSignal(other.failed, timeout=5000) as blocker:
        pass
    assert blocker.args[0].startswith("ZeroDivisionError")
    qtbot.waitUntil(lambda: manager.thread_count() == 0, timeout=5000)


def test_new_job_of_a_kind_supersedes_the_running_one(manager, qtbot):
    closed = threading.Event()

    def slow(token):
        def job():
            try:
                for i in range(1000):
                    time.sleep(0.01)
                    yield Progress(i, 1000)
            finally:
                closed.set()  # the generator was closed at its yield: rollback ran
            return "old"

        return job()

    first = manager.start("search", slow)
    qtbot.waitUntil(lambda: first.last_progress is not None, timeout=5000)
    second = manager.start("search", _counting_job(2))
    with qtbot.waitSignals([first.cancelled, second.finished], timeout=5000):
        pass
    assert closed.is_set()
    assert first.outcome == "cancelled" and second.result == 20


def test_superseded_result_is_dropped_even_if_it_finished(manager, qtbot):
    gate = threading.Event()

    def blocking(token):
        gate.wait(5)  # a callback-style step that does not look at the token
        return "stale"

    first = manager.start("search", blocking)
    second = manager.start("search", lambda token: "fresh")
    gate.set()
    with qtbot.waitSignals([first.ended, second.finished], timeout=5000):
        pass
    assert first.outcome == "cancelled" and first.result is None
    assert second.result == "fresh"


def test_lane_keeps_its_context_in_one_thread_and_runs_in_order(manager, qtbot):
    made_in: list[int] = []
    closed: list[str] = []

    def make_context():
        made_in.append(threading.get_ident())
        return {"log": []}

    manager.add_lane("engine", make_context, lambda ctx: closed.append("closed"))

    def step(name):
        def factory(ctx, token):
            ctx["log"].append((name, threading.get_ident()))
            return list(ctx["log"])

        return factory

    handles = [manager.start(f"k{i}", step(f"s{i}"), lane="engine") for i in range(4)]
    with qtbot.waitSignals([h.finished for h in handles], timeout=5000):
        pass
    log = handles[-1].result
    assert [name for name, _ in log] == ["s0", "s1", "s2", "s3"]
    assert {tid for _, tid in log} == {made_in[0]}
    assert len(made_in) == 1 and made_in[0] != threading.get_ident()
    assert manager.shutdown(timeout_s=5)
    assert closed == ["closed"]


def test_cancel_by_token_inside_callback_work(manager, qtbot):
    def factory(token: CancelToken):
        for _ in range(500):  # a training loop that only has the token
            time.sleep(0.01)
            token.raise_if_cancelled()
        return "done"

    handle = manager.start("training", factory)
    qtbot.wait(50)
    manager.cancel("training")
    with qtbot.waitSignal(handle.cancelled, timeout=5000):
        pass


def test_shutdown_cancels_and_waits_for_everything(qapp, qtbot):
    mgr = JobManager()
    mgr.add_lane("engine", lambda: object())

    def endless(token):
        def job():
            while True:
                time.sleep(0.005)
                yield Progress(0, 0)

        return job()

    handles = [mgr.start("a", endless), mgr.start("b", endless), mgr.start("c", lambda ctx, t: endless(t), lane="engine")]
    qtbot.wait(50)
    assert mgr.thread_count() == 3
    assert mgr.shutdown(timeout_s=10)
    assert mgr.thread_count() == 0
    assert all(h.outcome == "cancelled" for h in handles)
    assert not any(isinstance(t, QThread) and t.isRunning() for t in mgr.findChildren(QThread))


def test_start_after_shutdown_runs_nothing(qapp):
    mgr = JobManager()
    assert mgr.shutdown(timeout_s=5)
    ran = []
    handle = mgr.start("late", lambda token: ran.append(1))
    assert handle.outcome == "cancelled" and not handle.running and handle.token.cancelled
    assert mgr.thread_count() == 0 and ran == []
