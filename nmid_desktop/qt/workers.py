"""Long work off the GUI thread: job generators driven in QThreads.

A *job* is a core generator (see :mod:`nmid_desktop.core.jobs`): it yields
``Progress`` and returns its result; every yield is a cancel point. The window
never runs one itself. It hands a *factory* to :class:`JobManager`, which calls
it in a worker thread and drives the generator there:

* ``manager.start(kind, factory)`` runs ``factory(token)`` in a fresh thread;
* ``manager.start(kind, factory, lane="engine")`` runs ``factory(context, token)``
  on a persistent *lane*: one thread that owns objects which must stay in one
  thread (an SQLite connection, a loaded encoder), created there by the lane's
  context factory. Tasks on a lane run one after another, in order, so that
  "label this image" always lands before "find demonstrations for the next one".

Rules kept here (house style, after Orange's ``ConcurrentMixin`` and napari):

* One job of a kind at a time: starting a job cancels the running one of the
  same kind, whose late result is then dropped (it reports ``cancelled``).
* Factories take and return plain data (paths, arrays, dataclasses), never
  widgets; the handle's signals are emitted in the GUI thread, so slots
  connected to them may touch widgets.
* An exception in a job becomes a message on ``failed``; the thread still ends.
* Shutdown cancels every job and waits a short while for every thread.
  ``QThread.terminate`` is never used: a job stops at its next cancel point. A
  thread still stuck after the wait (a request to a server that never answers)
  is *abandoned*: kept referenced here for the rest of the process, because Qt
  aborts the process when a running QThread object is destroyed, and
  :func:`exit_process` ends the process without joining it.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import queue
import sys
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QCoreApplication, QEventLoop, QObject, QThread, Signal, Slot

from nmid_desktop.core.errors import Cancelled, NmidError
from nmid_desktop.core.jobs import CancelToken, Progress

log = logging.getLogger(__name__)

# Progress without a payload is coalesced to at most one report per interval, so a
# job yielding per file cannot flood the GUI thread's event queue.
PROGRESS_INTERVAL_S = 0.05

Factory = Callable[..., Any]

# Threads that did not end within a shutdown's wait. Never released: destroying a
# running QThread aborts the process (``QThread: Destroyed while thread is still running``).
_ABANDONED: list[_WorkerThread] = []


def abandoned_threads() -> int:
    """How many threads given up by a shutdown are still running."""
    return sum(1 for thread in _ABANDONED if thread.isRunning())


def exit_process(code: int) -> None:
    """End the process with ``code`` now when abandoned threads still run; else return.

    Python's normal exit would destroy those threads' QThread objects while they run,
    which aborts the process; their work is a request whose answer nobody waits for
    (every write is transactional, so nothing half-done is left behind).
    """
    if not abandoned_threads():
        return
    log.info("exiting without joining %d stuck worker thread(s)", abandoned_threads())
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed stream has nothing left to flush
            pass
    os._exit(code)


def freeze_heap() -> None:
    """Exclude every object alive now from Python's cyclic garbage collector.

    A full collection walks every tracked object while holding the GIL: with torch
    and the encoder loaded (some 400,000 objects) that is about 0.3 s on a lab PC,
    during which no thread runs, the GUI thread included. Long-lived objects (modules,
    the network, the library's rows) never become cyclic garbage worth finding, so
    after start-up and after loading big data they are frozen (``gc.freeze``); they
    are still freed normally when no longer referenced. (No ``gc.collect()`` first:
    that would be the very 0.3 s pause this avoids.)
    """
    gc.freeze()


def describe_error(exc: BaseException) -> str:
    """A one-line message for the user: NmidError text as is, anything else with its type.

    An exception that is not one of ours is a bug or an answer nobody foresaw (an HTML
    page where JSON was due): the message says so and points at the log file, which
    holds the traceback.
    """
    if isinstance(exc, NmidError):
        return str(exc)
    text = str(exc).strip() or "no details"
    return f"{type(exc).__name__}: {text} (unexpected: the traceback is in the log file)"


class JobHandle(QObject):
    """The GUI thread's view of one job. Signals arrive in the GUI thread.

    Exactly one of ``finished``, ``failed`` or ``cancelled`` is emitted, then ``ended``.
    """

    progress_changed = Signal(object)  # Progress
    finished = Signal(object)  # the job's return value
    failed = Signal(str)  # a message for the user
    cancelled = Signal()
    ended = Signal()

    def __init__(self, kind: str, job_id: int, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.kind = kind
        self.job_id = job_id
        self.token = CancelToken()
        self.superseded = False
        self.outcome: str | None = None  # "finished", "failed", "cancelled"
        self.result: Any = None
        self.error: str | None = None
        self.last_progress: Progress | None = None

    @property
    def running(self) -> bool:
        """True until the job has ended one way or another."""
        return self.outcome is None

    def cancel(self) -> None:
        """Ask the job to stop at its next cancel point (returns at once)."""
        self.token.cancel()

    def _deliver(self, outcome: str, payload: Any) -> None:
        if self.outcome is not None:
            return
        if self.superseded and outcome == "finished":
            # A newer job of this kind replaced this one: its result is stale.
            outcome = "cancelled"
        self.outcome = outcome
        if outcome == "finished":
            self.result = payload
            self.finished.emit(payload)
        elif outcome == "failed":
            self.error = str(payload)
            self.failed.emit(str(payload))
        else:
            self.cancelled.emit()
        self.ended.emit()


@dataclass
class _Task:
    job_id: int
    kind: str
    factory: Factory
    token: CancelToken


class _Relay(QObject):
    """Carries reports from worker threads to the manager (queued into the GUI thread)."""

    progress = Signal(int, object)
    outcome = Signal(int, str, object)


class _WorkerThread(QThread):
    """A thread that drives tasks from a queue; ``None`` in the queue ends it.

    A one-off job is a queue holding the task then ``None``; a lane keeps its
    queue open and owns a context object built in this thread on first use.
    """

    def __init__(
        self,
        name: str,
        relay: _Relay,
        context_factory: Callable[[], Any] | None = None,
        context_closer: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__()
        self.setObjectName(f"nmid-{name}")
        self.name = name
        self.tasks: queue.Queue[_Task | None] = queue.Queue()
        self._relay = relay
        self._context_factory = context_factory
        self._context_closer = context_closer
        self._context: Any = None
        self.current: _Task | None = None

    def run(self) -> None:  # runs in the new thread
        try:
            while True:
                task = self.tasks.get()
                if task is None:
                    break
                self.current = task
                try:
                    self._run_task(task)
                finally:
                    self.current = None
        finally:
            self._close_context()

    def _close_context(self) -> None:
        if self._context is not None and self._context_closer is not None:
            try:
                self._context_closer(self._context)
            except Exception:  # closing must never keep the thread alive
                log.exception("closing the %s lane's context failed", self.name)
        self._context = None

    def _run_task(self, task: _Task) -> None:
        relay = self._relay
        try:
            if task.token.cancelled:
                raise Cancelled()
            if self._context_factory is not None:
                if self._context is None:
                    self._context = self._context_factory()
                job = task.factory(self._context, task.token)
            else:
                job = task.factory(task.token)
            result = self._drive(task, job) if isinstance(job, Generator) else job
        except Cancelled:
            relay.outcome.emit(task.job_id, "cancelled", None)
        except Exception as exc:
            log.warning("job %s failed:\n%s", task.kind, traceback.format_exc())
            relay.outcome.emit(task.job_id, "failed", describe_error(exc))
        else:
            relay.outcome.emit(task.job_id, "finished", result)

    def _drive(self, task: _Task, job: Generator[Progress, None, Any]) -> Any:
        last_emit = 0.0
        pending: Progress | None = None
        try:
            while True:
                if task.token.cancelled:
                    job.close()  # GeneratorExit at the job's yield: its finally blocks roll back
                    raise Cancelled()
                try:
                    progress = next(job)
                except StopIteration as stop:
                    return stop.value
                now = time.monotonic()
                if progress.data is not None or now - last_emit >= PROGRESS_INTERVAL_S:
                    self._relay.progress.emit(task.job_id, progress)
                    last_emit, pending = now, None
                else:
                    pending = progress
        finally:
            if pending is not None and not task.token.cancelled:
                self._relay.progress.emit(task.job_id, pending)


class JobManager(QObject):
    """Starts, supersedes, cancels and waits for the window's background jobs.

    Create it in the GUI thread. Lanes are registered once with
    :meth:`add_lane`; one-off jobs get a thread each.
    """

    busy_changed = Signal(bool)  # True while any job runs
    job_started = Signal(object)  # JobHandle
    job_ended = Signal(object)  # JobHandle

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._relay = _Relay()
        self._relay.progress.connect(self._on_relay_progress)
        self._relay.outcome.connect(self._on_relay_outcome)
        self._ids = itertools.count(1)
        self._handles: dict[int, JobHandle] = {}
        self._latest: dict[str, JobHandle] = {}
        self._threads: set[_WorkerThread] = set()
        self._lanes: dict[str, _WorkerThread] = {}
        self._closed = False

    # -- lanes ---------------------------------------------------------------------
    def add_lane(
        self,
        name: str,
        context_factory: Callable[[], Any],
        context_closer: Callable[[Any], None] | None = None,
    ) -> None:
        """Register a persistent thread whose tasks share one context made in that thread.

        Replacing an existing lane stops the old one after its queued tasks (its
        context is closed in its own thread).
        """
        old = self._lanes.pop(name, None)
        if old is not None:
            old.tasks.put(None)
        thread = _WorkerThread(name, self._relay, context_factory, context_closer)
        thread.finished.connect(self._on_thread_finished)
        self._lanes[name] = thread
        self._threads.add(thread)
        thread.start()

    def has_lane(self, name: str) -> bool:
        """Whether a lane of that name is registered."""
        return name in self._lanes

    # -- jobs ----------------------------------------------------------------------
    def start(self, kind: str, factory: Factory, *, lane: str | None = None) -> JobHandle:
        """Run a job in the background; a running job of the same kind is cancelled.

        Args:
            kind: The job's kind ("search", "import", "training", ...).
            factory: Without ``lane``, ``factory(token)``; on a lane,
                ``factory(context, token)``. Called in the worker thread; returns a
                job generator (driven there) or a plain value.
            lane: Name of a lane registered with :meth:`add_lane`, or None for a
                fresh thread.

        Returns:
            The job's handle; connect to its signals before control returns to the
            event loop (reports are queued, so none is missed). After :meth:`shutdown`
            the handle is already cancelled and emits nothing.
        """
        if self._closed:
            # A slot that runs while the window closes may still ask for work: it gets a
            # handle that is already over and never runs anything.
            handle = JobHandle(kind, next(self._ids))
            handle.token.cancel()
            handle.outcome = "cancelled"
            log.debug("job %s not started: shutting down", kind)
            return handle
        previous = self._latest.get(kind)
        if previous is not None and previous.running:
            previous.superseded = True
            previous.cancel()
        job_id = next(self._ids)
        # No Qt parent: the handle lives as long as someone holds it, so a panel may
        # keep it and read ``running`` after the job ended.
        handle = JobHandle(kind, job_id)
        self._handles[job_id] = handle
        self._latest[kind] = handle
        task = _Task(job_id, kind, factory, handle.token)
        if lane is not None:
            if lane not in self._lanes:
                raise KeyError(f"no lane named {lane!r}")
            self._lanes[lane].tasks.put(task)
        else:
            thread = _WorkerThread(kind, self._relay)
            thread.finished.connect(self._on_thread_finished)
            thread.tasks.put(task)
            thread.tasks.put(None)
            self._threads.add(thread)
            thread.start()
        was_busy = len(self._handles) > 1
        self.job_started.emit(handle)
        if not was_busy:
            self.busy_changed.emit(True)
        return handle

    def handle(self, kind: str) -> JobHandle | None:
        """The newest job of that kind while it runs, else None."""
        handle = self._latest.get(kind)
        return handle if handle is not None and handle.running else None

    def is_running(self, kind: str) -> bool:
        """Whether a job of that kind is running."""
        return self.handle(kind) is not None

    def running_kinds(self) -> list[str]:
        """Kinds of the jobs running now."""
        return sorted({h.kind for h in self._handles.values()})

    def cancel(self, kind: str) -> None:
        """Cancel the running job of that kind, if any (returns at once)."""
        for handle in self._handles.values():
            if handle.kind == kind:
                handle.cancel()

    def cancel_now(self, kind: str) -> bool:
        """Cancel the running job of that kind and report it ``cancelled`` at once.

        For work stuck where no cancel point is near (a request to a server that
        does not answer): the handle ends now, the thread goes on until its call
        returns, and whatever it reports then is dropped.

        Returns:
            True when a running job was ended.
        """
        ended = False
        for job_id, handle in list(self._handles.items()):
            if handle.kind == kind:
                handle.cancel()
                self._on_relay_outcome(job_id, "cancelled", None)
                ended = True
        return ended

    def cancel_all(self) -> None:
        """Cancel every running job (returns at once)."""
        for handle in list(self._handles.values()):
            handle.cancel()

    @property
    def busy(self) -> bool:
        """True while any job runs."""
        return bool(self._handles)

    def thread_count(self) -> int:
        """Threads alive (lanes included); zero after :meth:`shutdown`."""
        return sum(1 for t in self._threads if t.isRunning())

    def shutdown(self, timeout_s: float | None = None) -> bool:
        """Cancel everything, stop the lanes and wait for every thread.

        Reports still queued are delivered while waiting, so handles end cleanly.
        Threads still running when the time is up are abandoned (see
        :func:`exit_process`); their handles report ``cancelled`` at once.

        Args:
            timeout_s: Give up waiting after this long in all (None: wait until done).

        Returns:
            True when every thread has ended.
        """
        self._closed = True
        self.cancel_all()
        for lane in self._lanes.values():
            lane.tasks.put(None)
        self._lanes.clear()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in list(self._threads):
            while not thread.wait(20):
                QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
                if deadline is not None and time.monotonic() > deadline:
                    self._abandon_running(timeout_s or 0.0)
                    return False
        QCoreApplication.processEvents()
        for thread in list(self._threads):
            self._forget_thread(thread)
        return True

    def _abandon_running(self, waited_s: float) -> None:
        stuck = [t for t in self._threads if t.isRunning()]
        names = ", ".join(t.objectName() for t in stuck)
        log.warning("%d worker thread(s) still running after %.1f s, abandoned: %s", len(stuck), waited_s, names)
        for thread in list(self._threads):
            if thread.isRunning():
                _ABANDONED.append(thread)
            else:
                thread.wait()
            self._threads.discard(thread)
        for job_id in list(self._handles):
            self._on_relay_outcome(job_id, "cancelled", None)

    # -- relay slots (GUI thread) ----------------------------------------------------
    @Slot(int, object)
    def _on_relay_progress(self, job_id: int, progress: Progress) -> None:
        handle = self._handles.get(job_id)
        if handle is None or handle.superseded:
            return
        handle.last_progress = progress
        handle.progress_changed.emit(progress)

    @Slot(int, str, object)
    def _on_relay_outcome(self, job_id: int, outcome: str, payload: Any) -> None:
        handle = self._handles.pop(job_id, None)
        if handle is None:
            return
        try:
            handle._deliver(outcome, payload)
        except Exception:
            # A slot that raises must not leave the manager thinking the job still runs.
            log.exception("a slot connected to job %s raised", handle.kind)
        finally:
            if self._latest.get(handle.kind) is handle:
                del self._latest[handle.kind]
            self.job_ended.emit(handle)
            if not self._handles:
                self.busy_changed.emit(False)

    @Slot()
    def _on_thread_finished(self) -> None:
        # A bound slot, not a lambda: QThread.finished is emitted in the ending thread,
        # and only a receiver living in the GUI thread makes the call queued.
        thread = self.sender()
        if isinstance(thread, _WorkerThread):
            self._forget_thread(thread)

    def _forget_thread(self, thread: _WorkerThread) -> None:
        if thread in self._threads:
            thread.wait()  # returns at once: the thread has left run()
            self._threads.discard(thread)


class LibraryWatcher(QObject):
    """Drives the library watch job (``workspace.watch.watch_library``) in a worker thread.

    The job never ends by itself: it waits on the store for label changes and yields a
    report for each batch. Its reports arrive here in the GUI thread and go out as
    signals. Starting again (a library switch) supersedes the running job; :meth:`stop`
    cancels it, and the window's ``JobManager.shutdown`` waits for its thread like any
    other (the job notices a cancel within about half a second).
    """

    KIND = "watch"
    changed = Signal(object)  # WatchReport, state "changes"
    away = Signal(str)  # the server cannot be reached: what the store said
    back = Signal(object)  # WatchReport, state "back": the server answers again, with what was missed
    failed = Signal(str)  # the job ended with an error (not a lost server, which it retries)

    def __init__(self, jobs: JobManager, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.jobs = jobs
        self._handle: JobHandle | None = None

    @property
    def running(self) -> bool:
        """Whether the watch job runs."""
        return self._handle is not None and self._handle.running

    def start(self, factory: Factory) -> JobHandle:
        """Run ``factory(token)`` (returning the watch job) in a worker thread, replacing a running one."""
        handle = self.jobs.start(self.KIND, factory)
        self._handle = handle
        handle.progress_changed.connect(lambda progress, h=handle: self._on_handle_progress(h, progress))
        handle.failed.connect(lambda message, h=handle: self._on_handle_failed(h, message))
        return handle

    def stop(self) -> None:
        """Cancel the watch job (returns at once; later reports are dropped)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    def _on_handle_progress(self, handle: JobHandle, progress: Progress) -> None:
        report = progress.data
        if handle is not self._handle or report is None:
            return  # a stopped or replaced watcher's late report
        state = getattr(report, "state", "")
        if state == "away":
            self.away.emit(str(getattr(report, "message", "")))
        elif state == "back":
            self.back.emit(report)
        else:
            self.changed.emit(report)

    def _on_handle_failed(self, handle: JobHandle, message: str) -> None:
        if handle is self._handle:
            self.failed.emit(message)
