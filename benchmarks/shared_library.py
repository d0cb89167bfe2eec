"""A lab's shared library on PostgreSQL: concurrent labelling, and SQLite vs PostgreSQL store calls.

Usage::

    .venv/bin/python benchmarks/shared_library.py [--n 20000] [--clients 4] [--labels 2000]
        [--hot 0.2] [--dim 1280] [--url postgresql://...  --folder PATH]

Without ``--url`` it starts a throwaway server on 127.0.0.1 (tests/pg_server.py; needs
Debian's ``postgresql`` package). It builds an ``--n``-image SQLite library (half of
it labelled, embeddings of ``--dim`` floats), copies it to PostgreSQL with ``nmid
library copy``'s code, then prints:

1. ``--clients`` processes (separate PCs) each setting ``--labels`` labels on the
   shared library, as the window does: read the image, then set its label with
   ``expected_version``; on a conflict, re-read and set again. A fraction ``--hot`` of
   the picks come from 20 images everybody works on, so conflicts really happen.
   Printed: labels per second overall, p50/p95 of one label change, conflicts
   detected, and lost updates (applied changes missing from the history, or images
   whose final label or label version disagrees with the applied changes: must be 0).
2. The same single-client store calls on SQLite and on PostgreSQL side by side (the two
   take turns call by call), p50 and p95 in ms: open, stats (the counts ``nmid stats``
   shows), the store calls of one window query without the embedding (``query_start``:
   the image, its cached embedding, the labels version and the model's stored answer;
   ``query_finish``: the local prediction stored and the records of K=5 demonstrations
   read), one label set. Beside the query: its two PostgreSQL statements through libpq alone
   (prepared, results not decoded), the floor under any client of a two-round-trip query.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402

from nmid_desktop.core.errors import LabelConflict  # noqa: E402
from nmid_desktop.core.jobs import run_job  # noqa: E402
from nmid_desktop.core.store import ImageFilter, PredictionRecord, Store, open_library  # noqa: E402
from nmid_desktop.core.store.copy import copy_library  # noqa: E402

CLASSES = ("crazing", "inclusion", "patches", "pitted", "rolled", "scratches")
HOT = 20


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def build_sqlite(folder: Path, n: int, dim: int) -> list[str]:
    """An n-image library (referenced files), half labelled, with embeddings; returns the shas."""
    src = folder / "originals"
    src.mkdir(parents=True)
    dummy = src / "micrograph.png"
    dummy.write_bytes(b"not decoded by this benchmark")
    shas = [hashlib.sha256(f"image-{i}".encode()).hexdigest() for i in range(n)]
    rng = np.random.default_rng(0)
    with open_library(folder / "sqlite", user="seed") as store:
        ids: list[int] = []
        with store.transaction():
            for sha in shas:
                ids.append(store.add_image(dummy, sha256=sha, page=0, n_pages=1, width=200, height=200,
                                           dtype="uint8", copy=False)[0])
            for i in ids[::2]:
                store.set_label(i, CLASSES[i % len(CLASSES)], source="import")
        for start in range(0, n, 2000):
            chunk = ids[start:start + 2000]
            vectors = rng.standard_normal((len(chunk), dim)).astype(np.float32)
            store.put_embeddings("bench@1", chunk, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    return shas


def client(args: tuple[str, str, int, int, float, int]) -> dict[str, Any]:
    """One PC labelling: returns its latencies, conflicts and the changes it saw applied."""
    url, folder, k, labels, hot, n = args
    rng = random.Random(1000 + k)
    latencies: list[float] = []
    conflicts = 0
    applied: list[tuple[int, int, str]] = []
    with open_library(url, shared_folder=Path(folder), user=f"client{k}") as store:
        ids = [im.id for im in store.images(limit=n)]
        started = time.perf_counter()
        for _ in range(labels):
            image_id = rng.choice(ids[:HOT]) if rng.random() < hot else rng.choice(ids)
            label = rng.choice(CLASSES)
            version = store.get_image(image_id).label_version
            while True:
                t0 = time.perf_counter()
                try:
                    event = store.set_label(image_id, label, source="expert", expected_version=version)
                    latencies.append(time.perf_counter() - t0)
                    applied.append((event.id, image_id, label))
                    break
                except LabelConflict as exc:  # told; decide again from what the colleague set
                    latencies.append(time.perf_counter() - t0)
                    conflicts += 1
                    version = exc.label_version
        wall = time.perf_counter() - started
    return {"latencies": latencies, "conflicts": conflicts, "applied": applied, "wall": wall}


def lost_updates(store: Store, applied: list[tuple[int, int, str]]) -> int:
    """Applied changes missing from the history, plus images whose final state disagrees with them."""
    events = {e.id: e for e in store.history(limit=10_000_000) if e.kind == "label"}
    lost = sum(1 for event_id, image_id, label in applied
               if event_id not in events or (events[event_id].image_id, events[event_id].new_label) != (image_id, label))
    last: dict[int, tuple[int, str]] = {}
    count: dict[int, int] = {}
    for event_id, image_id, label in applied:
        count[image_id] = count.get(image_id, 0) + 1
        if event_id > last.get(image_id, (-1, ""))[0]:
            last[image_id] = (event_id, label)
    for im in store.images(ImageFilter(ids=list(last))):
        seed_changes = 1 if im.id % 2 == 1 else 0  # build_sqlite labelled every other id (ids start at 1)
        if im.label != last[im.id][1] or im.label_version != count[im.id] + seed_changes:
            lost += 1
    return lost


def calls(store: Store, n: int, seed: int) -> dict[str, Any]:
    """The store calls one window makes, on one backend (the same random choices on each)."""
    rng = random.Random(seed)

    def stats() -> None:
        store.count_images()
        store.count_images(ImageFilter(unlabelled=False))
        store.count_images(ImageFilter(synthetic=True))
        for review in ("pending", "accepted", "rejected"):
            store.count_images(ImageFilter(review=review))
        store.classes()
        store.labels_version()

    def query() -> None:
        # Engine.query's store calls (tests/unit/test_workspace.py holds the engine to them): the
        # image with its cached embedding, the labels version and the model's stored answer; the
        # search (in memory) gives K=5 demonstrations; the local prediction stored and the
        # demonstrations' records read.
        start = store.query_start(rng.randrange(1, n + 1), "bench@1")
        assert start.embedding is not None
        demos = [rng.randrange(1, n + 1) for _ in range(5)]
        store.query_finish(demos, PredictionRecord(
            image_id=start.record.id, predictor="knn", label=CLASSES[0],
            ranking=[(c, 1.0 / len(CLASSES)) for c in CLASSES], confidence=0.5, demo_ids=demos,
        ))

    def label() -> None:
        image_id = rng.randrange(1, n + 1)
        store.set_label(image_id, rng.choice(CLASSES), source="expert",
                        expected_version=store.get_image(image_id).label_version)

    return {"stats": stats, "query": query, "label": label}


def libpq_query(url: str, n: int, seed: int) -> Any:
    """The query's two PostgreSQL statements through libpq alone: the floor under any client.

    The same SQL as ``PgStore.query_start`` and ``query_finish``, prepared once and sent with
    ``PQexecPrepared`` (binary results, left undecoded), with the same random choices as
    :func:`calls`. What ``query`` costs above this is psycopg's execute machinery and the
    records built from the rows (which SQLite's figure includes too).
    """
    import re

    import psycopg

    from nmid_desktop.core.store.postgres import PgStore

    def numbered(sql: str) -> bytes:
        counter = iter(range(1, 100))
        return re.sub(r"\?", lambda _: f"${next(counter)}", sql).encode()

    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET plan_cache_mode = force_generic_plan")  # as PgStore's connections
    pg = conn.pgconn
    pg.prepare(b"bench_query_start", numbered(PgStore._QUERY_START))
    pg.prepare(b"bench_query_finish", numbered(PgStore._QUERY_FINISH))
    rng = random.Random(seed)

    def text(value: Any) -> bytes | None:
        return None if value is None else str(value).encode()

    def query() -> None:
        image_id = rng.randrange(1, n + 1)
        start = pg.exec_prepared(b"bench_query_start", [b"bench@1", b"lmm", str(image_id).encode()], result_format=1)
        assert start.ntuples == 1, start.get_error_message()
        demos = [rng.randrange(1, n + 1) for _ in range(5)]
        row = PgStore._prediction_row(PredictionRecord(
            image_id=image_id, predictor="knn", label=CLASSES[0],
            ranking=[(c, 1.0 / len(CLASSES)) for c in CLASSES], confidence=0.5, demo_ids=demos,
        ))
        finish = pg.exec_prepared(b"bench_query_finish", [*map(text, row), ("{" + ",".join(map(str, demos)) + "}").encode()],
                                  result_format=1)
        assert finish.ntuples >= 1, finish.get_error_message()

    query.close = conn.close  # type: ignore[attr-defined]
    return query


def side_by_side(locations: dict[str, tuple[str, Path | None]], n: int, repeat: int,
                 floor: Any = None) -> dict[str, dict[str, list[float]]]:
    """p50/p95 inputs of each call on each backend, the backends taking turns call by call.

    Taking turns (and swapping who goes first) puts both under the same moment's load: this
    machine is shared, and a burst elsewhere would otherwise land on one backend only.
    ``floor`` (:func:`libpq_query`) takes its turn with the queries, as ``res["libpq"]``.
    """
    res: dict[str, dict[str, list[float]]] = {name: {} for name in locations}
    res["libpq"] = {}

    def one(fn: Any) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    opens = {name: lambda loc=loc, folder=folder: open_library(loc, shared_folder=folder, user="solo").close()
             for name, (loc, folder) in locations.items()}
    stores = {name: open_library(loc, shared_folder=folder, user="solo") for name, (loc, folder) in locations.items()}
    try:
        work = {name: calls(store, n, seed=7) for name, store in stores.items()}
        for fns in work.values():
            fns["stats"]()  # warm connection and caches as a running window has them
        names = list(locations)
        for what in ("open", "stats", "query", "label"):
            # A p95 of 1,000 calls moves less from run to run than one of 300; open and stats
            # (tens of ms each) take a tenth of that.
            times = repeat if what in ("query", "label") else max(5, repeat // 10)
            for i in range(times):
                for name in names if i % 2 == 0 else names[::-1]:
                    fn = opens[name] if what == "open" else work[name][what]
                    res[name].setdefault(what, []).append(one(fn))
                if what == "query" and floor is not None:
                    res["libpq"].setdefault(what, []).append(one(floor))
    finally:
        for store in stores.values():
            store.close()
    return res


def settle(url: str, limit_s: float = 180.0) -> float:
    """Wait until no autovacuum worker runs (the burst's dead rows are cleaned); returns the wait."""
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        quiet = 0
        while time.perf_counter() - t0 < limit_s and quiet < 3:
            busy = conn.execute(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            ).fetchone()
            quiet = quiet + 1 if not busy or not busy[0] else 0
            time.sleep(1.0)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="images in the library")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--labels", type=int, default=2000, help="labels each client sets")
    parser.add_argument("--hot", type=float, default=0.2, help="fraction of picks among 20 shared images")
    parser.add_argument("--dim", type=int, default=1280, help="embedding size")
    parser.add_argument("--repeat", type=int, default=1000,
                        help="repetitions of each single-client query and label set (open, stats: a tenth)")
    parser.add_argument("--url", default=None, help="an empty database to use instead of a throwaway server")
    parser.add_argument("--folder", default=None, help="its shared folder (with --url)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nmid-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = None
        if args.url:
            url, folder = args.url, Path(args.folder or tmp / "shared")
        else:
            from pg_server import PgServer

            server = PgServer().start()
            url, folder = server.create_database("bench"), tmp / "shared"
        try:
            t0 = time.perf_counter()
            shas = build_sqlite(tmp, args.n, args.dim)
            built = time.perf_counter() - t0
            t0 = time.perf_counter()
            with open_library(tmp / "sqlite") as src, open_library(url, shared_folder=folder, user="seed") as dst:
                run_job(copy_library(src, dst))
            copied = time.perf_counter() - t0
            print(f"library: {args.n} images ({args.n // 2} labelled), {args.dim}-d embeddings; "
                  f"built on SQLite in {built:.1f} s, copied to PostgreSQL in {copied:.1f} s")

            jobs = [(url, str(folder), k, args.labels, args.hot, args.n) for k in range(args.clients)]
            t0 = time.perf_counter()
            with mp.get_context("spawn").Pool(args.clients) as pool:
                results = pool.map(client, jobs)
            wall = time.perf_counter() - t0
            latencies = [x for r in results for x in r["latencies"]]
            applied = [x for r in results for x in r["applied"]]
            busy = max(r["wall"] for r in results)
            with open_library(url, shared_folder=folder, user="check") as store:
                lost = lost_updates(store, applied)
            print(f"\n{args.clients} concurrent clients x {args.labels} labels (hot fraction {args.hot}):")
            print(f"  labels/s overall      {len(applied) / busy:8.0f}   ({len(applied)} labels in {busy:.1f} s; "
                  f"{wall:.1f} s with process start)")
            print(f"  label change p50/p95  {1000 * pct(latencies, 50):8.2f} / {1000 * pct(latencies, 95):.2f} ms")
            print(f"  conflicts detected    {sum(r['conflicts'] for r in results):8d}")
            print(f"  lost updates          {lost:8d}")

            settled = settle(url)
            print(f"\nautovacuum after the burst: {settled:.1f} s until no worker ran (the single-client figures "
                  "are a server between bursts, as a lab's is most of the day)")
            floor = libpq_query(url, len(shas), seed=7)
            try:
                both = side_by_side({"sqlite": (str(tmp / "sqlite"), None), "pg": (url, folder)}, len(shas),
                                    args.repeat, floor)
            finally:
                floor.close()
            sqlite, pg = both["sqlite"], both["pg"]
            print(f"\nsingle client, p50 / p95 in ms over {args.repeat} calls (open, stats: {max(5, args.repeat // 10)}), "
                  "the two taking turns:")
            print(f"  {'':<8}{'SQLite':>18}{'PostgreSQL':>20}{'p95 ratio':>12}")
            for name in ("open", "stats", "query", "label"):
                a, b = sqlite[name], pg[name]
                print(f"  {name:<8}{1000 * pct(a, 50):8.2f} / {1000 * pct(a, 95):7.2f}"
                      f"{1000 * pct(b, 50):10.2f} / {1000 * pct(b, 95):7.2f}{pct(b, 95) / pct(a, 95):11.2f}x")
            a, b = sqlite["query"], both["libpq"]["query"]
            print(f"  {'libpq':<8}{'':>18}{1000 * pct(b, 50):10.2f} / {1000 * pct(b, 95):7.2f}"
                  f"{pct(b, 95) / pct(a, 95):11.2f}x   (the query's two statements through libpq alone,")
            print(f"  {'':<8}{'':>18}{'':>20}{'':>12}    results undecoded: the floor of two round trips;"
                  " p50 ratio "
                  f"{pct(b, 50) / pct(a, 50):.2f}x)")
        finally:
            if server is not None:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
