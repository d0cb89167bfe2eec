"""The library watch job (workspace/watch.py), iterated directly with a cancel token: no Qt.

"Users" are separate stores on one library, as on separate PCs; the PostgreSQL cases
run on a real server, and the server-away case really stops and restarts it.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from library_fixture import Library

from nmid_desktop.core.errors import Cancelled
from nmid_desktop.core.jobs import CancelToken
from nmid_desktop.core.store import ImageRecord, Store
from nmid_desktop.workspace.watch import WatchReport, colleague_line, watch_library


def _add(store: Store, folder: Path, n: int) -> list[int]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        content = f"watch-{i}".encode()
        path = folder / f"w{i}.png"
        path.write_bytes(content)
        image_id, _ = store.add_image(
            path, sha256=hashlib.sha256(content).hexdigest(), page=0, n_pages=1, width=8, height=8, dtype="uint8"
        )
        ids.append(image_id)
    return ids


def _report(job) -> WatchReport:  # noqa: ANN001 - the watch generator
    report = next(job).data
    assert isinstance(report, WatchReport)
    return report


def test_a_colleagues_label_is_reported_and_handed_to_the_buffer(library: Library, tmp_path: Path) -> None:
    ana = library.open(user="ana")
    bob = library.open(user="bob")
    a, b = _add(ana, tmp_path / "src", 2)
    taken: list[int] = []

    def take(records: Sequence[ImageRecord]) -> None:
        taken.extend(r.id for r in records)

    token = CancelToken()
    job = watch_library(ana, token, take=take, since=ana.labels_version(), wait_s=0.2)
    bob.set_label(a, "scratches", source="expert")
    report = _report(job)
    assert report.state == "changes" and [(r.id, r.label, r.label_actor) for r in report.changes] == [(a, "scratches", "bob")]
    assert report.mine == () and taken == [a]  # the intake got it before the window was told
    assert colleague_line(report.changes) == f"bob labelled #{a} scratches"
    ana.set_label(b, "pores", source="expert")  # ana's own change (another window of hers): not a colleague's
    report = _report(job)
    assert report.changes == () and [r.id for r in report.mine] == [b] and taken == [a, b]
    token.cancel()
    with pytest.raises(Cancelled):
        next(job)


def test_a_cancel_ends_a_waiting_watcher_promptly(library: Library) -> None:
    store = library.open(user="ana")
    token = CancelToken()
    outcome: list[str] = []

    def run() -> None:
        try:
            for _ in watch_library(store, token):
                outcome.append("report")
        except Cancelled:
            outcome.append("cancelled")

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.6)  # waiting on the store now
    started = time.monotonic()
    token.cancel()
    thread.join(timeout=10)
    assert not thread.is_alive() and outcome == ["cancelled"]
    assert time.monotonic() - started < 3  # the window's close waits 1.5 s for its workers


def test_server_away_is_reported_retried_and_caught_up(pg_library: Library, pg_server, tmp_path: Path) -> None:  # noqa: ANN001
    ana = pg_library.open(user="ana")
    bob = pg_library.open(user="bob")
    ids = _add(ana, tmp_path / "src", 3)
    token = CancelToken()
    reports: queue.Queue[WatchReport | BaseException] = queue.Queue()

    def run() -> None:
        try:
            for progress in watch_library(ana, token, since=ana.labels_version(), wait_s=0.2, backoff_s=(0.2, 0.5)):
                reports.put(progress.data)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            reports.put(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        bob.set_label(ids[0], "before", source="expert")
        first = reports.get(timeout=30)
        assert isinstance(first, WatchReport) and [r.id for r in first.changes] == [ids[0]]
        pg_server.stop(remove=False)
        try:
            away = reports.get(timeout=30)
            assert isinstance(away, WatchReport) and away.state == "away" and "shared library" in away.message
            assert reports.empty()  # said once, however many retries
        finally:
            pg_server._start()
        bob.set_label(ids[1], "during", source="expert")  # bob's store reconnects; the watcher may not have yet
        bob.set_label(ids[2], "after", source="expert")
        seen: dict[int, str | None] = {}
        states: list[str] = []
        deadline = time.monotonic() + 60
        while {ids[1], ids[2]} - seen.keys() and time.monotonic() < deadline:
            item = reports.get(timeout=60)
            assert isinstance(item, WatchReport), item
            states.append(item.state)
            seen.update((r.id, r.label) for r in item.changes)
        assert states[0] == "back" and seen == {ids[1]: "during", ids[2]: "after"}  # nothing missed
    finally:
        token.cancel()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_the_engine_keeps_what_it_read_for_browsing_while_the_server_is_away(pg_library: Library, pg_server,  # noqa: ANN001
                                                                                  tmp_path: Path) -> None:
    from nmid_desktop.core.config import Settings
    from nmid_desktop.core.errors import LibraryUnavailable
    from nmid_desktop.workspace.engine import Engine

    seen, unseen = _add(pg_library.open(user="bob"), tmp_path / "src", 2)
    settings = Settings()
    settings.shared_folder = str(pg_library.shared)
    engine = Engine(pg_library.location, settings)
    try:
        assert engine.record(seen).id == seen
        pg_server.stop(remove=False)
        try:
            assert engine.record(seen).id == seen  # the last read, while the server is away
            with pytest.raises(LibraryUnavailable, match="shared library"):
                engine.record(unseen)  # never read: said clearly, no traceback
        finally:
            pg_server._start()
        assert engine.record(unseen).id == unseen  # back: read from the server again
    finally:
        engine.close()
