"""Watch a library for colleagues' label changes: a long job that never ends by itself.

On a shared (PostgreSQL) library several people label at once. :func:`watch_library`
waits on ``Store.wait_for_changes`` (LISTEN/NOTIFY on PostgreSQL, a cheap version
poll on SQLite), reads what changed with ``changes_since``, hands the changed images
to the engine's exact buffer (so a colleague's accepted label is a demonstration for
the next query, without an index rebuild) and yields one :class:`WatchReport` per
batch of changes for the window.

When the database server goes away (stopped, restarting, network gone) the job
reports ``away`` once, retries with a growing pause, reports ``back`` when the server
answers again, and catches up everything missed meanwhile: ``changes_since`` lists
every image changed after the last version seen, however many changes that was.

No Qt here: the window drives this generator in a worker (``qt.workers``); the
tests iterate it directly with a cancel token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nmid_desktop.core.errors import Cancelled, LibraryUnavailable
from nmid_desktop.core.jobs import CancelToken, Job, Progress
from nmid_desktop.core.store import ImageRecord, Store

log = logging.getLogger(__name__)

# Each wait is short so a cancel (library switch, close) is noticed within this many seconds;
# on PostgreSQL a change wakes the wait at once, whatever this is.
WAIT_S = 0.5
BACKOFF_S = (0.5, 1.0, 2.0, 4.0)  # pauses between reconnect attempts while the server is away; the last repeats


@dataclass(frozen=True)
class WatchReport:
    """What the watcher saw, for the window (plain data, made in the worker).

    Attributes:
        state: ``"changes"`` (labels changed), ``"away"`` (the server cannot be reached)
            or ``"back"`` (it answers again; ``changes`` holds what was missed).
        version: The labels version read with these changes.
        changes: Images changed by someone else (their label, review and ``label_actor``).
        mine: Images changed by this store's user (another window or ``nmid label`` of theirs).
        full: The taxonomy changed (a class renamed or merged): every view re-reads.
        message: For ``away``: what the store said.
    """

    state: str
    version: int
    changes: tuple[ImageRecord, ...] = ()
    mine: tuple[ImageRecord, ...] = ()
    full: bool = False
    message: str = ""


def colleague_line(changes: tuple[ImageRecord, ...]) -> str:
    """The status-bar line for colleagues' changes: ``Ana labelled #123 scratches`` (and N more)."""
    if not changes:
        return ""
    latest = changes[-1]
    who = latest.label_actor or "A colleague"
    if latest.review == "rejected":
        what = f"rejected #{latest.id}"
    elif latest.label:
        what = f"labelled #{latest.id} {latest.label}"
    else:
        what = f"cleared the label of #{latest.id}"
    more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
    return f"{who} {what}{more}"


def _pause(token: CancelToken, seconds: float) -> None:
    """Sleep ``seconds`` in short slices, raising ``Cancelled`` as soon as the token is set."""
    deadline = time.monotonic() + seconds
    while True:
        token.raise_if_cancelled()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.1, left))


def watch_library(
    store: Store,
    token: CancelToken,
    *,
    take: Callable[[Sequence[ImageRecord]], None] | None = None,
    since: int | None = None,
    wait_s: float = WAIT_S,
    backoff_s: tuple[float, ...] = BACKOFF_S,
) -> Job[None]:
    """Follow the library's label changes until cancelled.

    Args:
        store: The open library (the job reads it from its own thread: stores give each
            thread its own connection).
        token: Cancelling it ends the job within about ``wait_s`` seconds (``Cancelled``).
        take: Called with the changed images' records before each report (the engine's
            buffer intake: ``Engine.take_changes``); None to only report.
        since: Start after this labels version (default: the version now).
        wait_s: Longest single wait; also how quickly a cancel is noticed.
        backoff_s: Pauses between attempts while the server is away; the last one repeats.

    Yields:
        ``Progress(data=WatchReport)`` for each batch of changes and each away/back.

    Raises:
        Cancelled: The token was set.
    """
    away = False
    attempt = 0
    while since is None:
        try:
            since = store.labels_version()
        except LibraryUnavailable as exc:
            token.raise_if_cancelled()
            if not away:
                away = True
                yield Progress(0, 0, "server away", data=WatchReport("away", 0, message=str(exc)))
            _pause(token, backoff_s[min(attempt, len(backoff_s) - 1)])
            attempt += 1
    while True:
        token.raise_if_cancelled()
        try:
            version = store.wait_for_changes(since, timeout_s=wait_s)
            token.raise_if_cancelled()
            if version <= since and not away:
                continue
            found = store.changes_since(since)
            if found.images or found.full:
                if take is not None:  # inside the try: a server lost meanwhile means these are read again
                    take(found.images)
        except LibraryUnavailable as exc:
            token.raise_if_cancelled()
            if not away:
                away = True
                log.info("shared library away: %s", exc)
                yield Progress(0, 0, "server away", data=WatchReport("away", since, message=str(exc)))
            _pause(token, backoff_s[min(attempt, len(backoff_s) - 1)])
            attempt += 1
            continue
        except Exception:
            if token.cancelled:  # the store was closed under us by a library switch or the close
                raise Cancelled() from None
            raise
        state = "back" if away else "changes"
        away, attempt = False, 0
        user = store.user
        changes = tuple(r for r in found.images if not user or (r.label_actor or "") != user)
        mine = tuple(r for r in found.images if user and (r.label_actor or "") == user)
        since = max(since, found.version)
        if state == "back" or changes or mine or found.full:
            yield Progress(0, 0, state, data=WatchReport(state, found.version, changes, mine, found.full))
