"""The library browser at a million rows: first paint, GUI stalls while scrolling end to end, RSS growth.

    python benchmarks/browser_million.py [--n 1000000] [--order id|uncertain] [--pg URL] [--page-size 200]

Fills a library with ``--n`` image rows (no image files: every path points nowhere, so
thumbnails show as unreadable, which is what the browser does for a missing file) in big
``executemany`` transactions, a third of them labelled, half with a local (kNN) prediction
and a tenth with a model answer; SQLite in a temporary folder by default, or the empty
PostgreSQL database at ``--pg``. Then it opens the real library browser offscreen (its own
worker lane, as in the window), and prints:

- first paint: from ``refresh()`` until the first page is listed and painted (target < 1 s);
- the longest lateness of a 10 ms timer on the GUI thread while the view scrolls from the
  first row to the last in ``--steps`` steps (pages painted are read by id as they appear),
  then jumps to 40 random places (target: no stall over 100 ms);
- RSS growth from just before the browser opens to the end, current and peak (target < 500 MB).

Targets are figures to read, not assertions: the machine is shared and timings are noisy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
CHUNK = 50_000


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fill(store: object, n: int, seed: int = 0) -> None:
    """Add ``n`` image rows, labels and predictions straight through the store's SQL (no files)."""
    from nmid_desktop.core.store.sql import SqlStore

    if not isinstance(store, SqlStore):
        raise SystemExit("the benchmark fills SQL libraries only")
    rng = random.Random(seed)
    class_ids = [store.add_class(name).id for name in CLASSES]
    now = "2026-01-01T00:00:00.000+00:00"
    done = 0
    while done < n:
        count = min(CHUNK, n - done)
        images = []
        for i in range(done, done + count):
            sha = hashlib.sha256(str(i).encode()).hexdigest()
            labelled = i % 3 == 0
            images.append((
                sha, 0, f"/nonexistent/{i}.png", 0, f"/nonexistent/{i}.png", f"img_{i:07d}.png", 200, 200, 1,
                "uint8", now, class_ids[i % len(class_ids)] if labelled else None, "import" if labelled else None,
                "accepted" if labelled and i % 2 else "pending",
            ))
        with store.transaction():
            store._many(
                """INSERT INTO images (sha256, page, path, stored, original_path, original_name, width, height,
                   n_pages, dtype, added_at, class_id, label_source, review) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                images,
            )
        first = int(store._q("SELECT MIN(id) FROM images WHERE sha256 = ?", (images[0][0],)).fetchone()[0])
        predictions = []
        for k in range(count):
            if rng.random() < 0.5:
                raw = sorted((rng.random() for _ in CLASSES), reverse=True)
                total = sum(raw)
                ranking = [[name, p / total] for name, p in zip(rng.sample(CLASSES, len(CLASSES)), raw, strict=True)]
                predictions.append((first + k, "knn", ranking[0][0], json.dumps(ranking), ranking[0][1], now))
                if rng.random() < 0.2:
                    label = rng.choice(CLASSES)
                    predictions.append((first + k, "lmm", label, json.dumps([[label, 1.0]]), 1.0, now))
        with store.transaction():
            store._many(
                "INSERT INTO predictions (image_id, predictor, label, ranking, confidence, at) VALUES (?,?,?,?,?,?)",
                predictions,
            )
        done += count
        print(f"  {done:,} rows", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="image rows in the library")
    parser.add_argument("--order", default="id", choices=("id", "uncertain", "disagree"), help="the browser's order")
    parser.add_argument("--library", default="", help="a library folder to keep between runs (filled when empty)")
    parser.add_argument("--pg", default="", help="an empty PostgreSQL database URL instead of SQLite")
    parser.add_argument("--page-size", type=int, default=200, help="rows per page")
    parser.add_argument("--steps", type=int, default=400, help="scroll steps from the first row to the last")
    parser.add_argument("--jumps", type=int, default=40, help="jumps back to rows scrolled past")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="nmid-million-") as tmp:
        base = Path(tmp)
        for name in ("NMID_CONFIG_DIR", "NMID_DATA_DIR", "NMID_CACHE_DIR"):
            os.environ[name] = str(base / name.lower())
        from nmid_desktop.core.config import Settings
        from nmid_desktop.core.store import open_library
        from nmid_desktop.core.store.sql import SqlStore
        from nmid_desktop.qt.app import make_application
        from nmid_desktop.qt.context import AppContext
        from nmid_desktop.qt.event_loop import spin, wait_until
        from nmid_desktop.qt.watchdog import StallWatchdog
        from nmid_desktop.qt.widgets.library_browser import LibraryBrowser
        from nmid_desktop.qt.workers import JobManager
        from nmid_desktop.workspace.display import ThumbnailCache

        library: Path | str = args.pg or (Path(args.library) if args.library else base / "library")
        started = time.perf_counter()
        with open_library(library, shared_folder=base / "shared") if args.pg else open_library(library) as store:
            have = store.count_images()
            if have == 0:
                fill(store, args.n)
                print(f"filled {args.n:,} rows in {time.perf_counter() - started:.1f} s", flush=True)
            else:
                print(f"the library has {have:,} rows already", flush=True)
            if isinstance(store, SqlStore) and args.order != "id":
                t = time.perf_counter()
                read = store.refresh_queue_keys()
                print(f"review-queue keys from {read:,} predictions in {time.perf_counter() - t:.1f} s (once)")

        app = make_application()
        jobs = JobManager()
        settings = Settings()
        ctx = AppContext(library, settings, jobs, ThumbnailCache(base / "thumbs"))
        rss0 = _rss_mb()
        browser = LibraryBrowser(ctx, page_size=args.page_size)
        browser.order_combo.setCurrentIndex(browser.order_combo.findData(args.order))
        browser.resize(1400, 900)
        browser.show()
        painted: list[float] = []
        view = browser.view

        t0 = time.perf_counter()
        browser.refresh()
        wait_until(lambda: browser.model.rowCount() > 0, 60, "the first page")
        view.viewport().repaint()
        painted.append(time.perf_counter() - t0)
        wait_until(lambda: browser.count_label.text()[:1].isdigit(), 120, "the count")
        counted = time.perf_counter() - t0
        print(f"first paint: {painted[0] * 1000:.0f} ms; count shown after {counted * 1000:.0f} ms "
              f"({browser.count_label.text()})", flush=True)

        watchdog = StallWatchdog(interval_ms=10)
        watchdog.start()
        bar = view.verticalScrollBar()
        t1 = time.perf_counter()
        for step in range(1, args.steps + 1):
            bar.setValue(bar.maximum() * step // args.steps)
            spin(0.02)
        print(f"  {args.steps} steps in {time.perf_counter() - t1:.1f} s; scroll range {bar.maximum():,} px", flush=True)
        model = browser.model
        def at_the_end() -> bool:
            # The view lays out a million rows in batches: the scroll range grows until it is done.
            bar.setValue(bar.maximum())
            return model.complete and model.row_data(model.rowCount() - 1) is not None

        wait_until(at_the_end, 600, "the last page")
        scrolled = time.perf_counter() - t1
        rows = model.rowCount()
        rng = random.Random(1)
        for _ in range(args.jumps):
            bar.setValue(rng.randrange(max(1, bar.maximum())))
            spin(0.05)
        longest = watchdog.stop()
        spin(0.5)
        rss1 = _rss_mb()
        print(f"scrolled end to end through {rows:,} rows in {scrolled:.1f} s ({args.steps} steps), then {args.jumps} jumps")
        print(f"GUI stall: longest {longest * 1000:.0f} ms over {watchdog.ticks} ticks; "
              f"stalls > 100 ms: {len(watchdog.stalls)} {[round(s * 1000) for _, s in watchdog.stalls][:20]}")
        print(f"RSS: {rss0:.0f} MB before the browser, {rss1:.0f} MB after: growth {rss1 - rss0:.0f} MB "
              f"(peak {_peak_mb():.0f} MB)")
        print(f"rows in memory: {len(browser.model.rows()):,} of {rows:,}; thumbnails cached: "
              f"{browser.model.cached_thumbnails}")
        browser.shutdown()
        jobs.shutdown(30)
        browser.close()
        del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
