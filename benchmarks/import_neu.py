"""Import the NEU surface-defect set into a fresh library and print the figures.

Usage::

    .venv/bin/python benchmarks/import_neu.py [--data PATH] [--workers N] [--keep DIR]

Prints import time, images per second, peak resident memory of the whole process
(Python, NumPy, Pillow included), library size on disk, the counts per outcome and
per class, the duplicate(s) reported, how many images got a data bar crop (NEU has
no data bars, so every crop would be a false one), and the time of a second import
of the same folder (all duplicates). Target on a 2-core machine: < 20 s, < 400 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nmid_desktop.commands.library import folder_size  # noqa: E402
from nmid_desktop.core.importer import import_folder  # noqa: E402
from nmid_desktop.core.jobs import run_job  # noqa: E402
from nmid_desktop.core.store import open_library  # noqa: E402


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / (1024 * 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "neu_cls")
    parser.add_argument("--workers", type=int, default=None, help="hashing/decoding threads (default: up to 4)")
    parser.add_argument("--keep", type=Path, default=None, help="build the library here and keep it")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 1

    tmp = None
    if args.keep:
        library = args.keep
    else:
        tmp = tempfile.mkdtemp(prefix="nmid-bench-")
        library = Path(tmp) / "library"
    try:
        rss_before = peak_rss_mb()
        with open_library(library) as store:
            start, cpu_start = time.perf_counter(), time.process_time()
            report = run_job(import_folder(store, args.data, workers=args.workers))
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            rss_peak = peak_rss_mb()
            n_files = len(report.items)
            cropped = sum(
                1 for image in store.iter_images()
                if image.crop_box is not None and image.crop_box != (0, 0, image.width, image.height)
            )
            classes = store.classes()
            start = time.perf_counter()
            again = run_job(import_folder(store, args.data, workers=args.workers))
            seconds_again = time.perf_counter() - start

        print(f"data: {args.data}")
        print(f"cpus: {os.cpu_count()}  workers: {args.workers or 'default'}")
        print(f"files: {n_files}  {report.summary()}")
        print(f"import time: {seconds:.2f} s  ({n_files / seconds:.0f} images/s); CPU time (all threads) {cpu_seconds:.2f} s")
        if hasattr(os, "getloadavg"):
            print(f"load average (other processes share the CPUs): {os.getloadavg()[0]:.2f}")
        print(f"peak RSS: {rss_peak:.0f} MB (after imports, before the import job: {rss_before:.0f} MB)")
        db = sum(folder_size(p) if p.is_dir() else p.stat().st_size for p in library.iterdir() if p.name != "images")
        images = folder_size(library / "images")
        print(f"library size on disk: {(db + images) / 2**20:.1f} MB (images {images / 2**20:.1f} MB, database {db / 2**20:.2f} MB)")
        print("classes: " + ", ".join(f"{c.name} {c.count}" for c in classes))
        for item in report.items:
            if item.status == "duplicate":
                print(f"duplicate: {item.path} = {item.duplicate_of}")
            elif item.status == "skipped":
                print(f"skipped: {item.path}: {item.reason}")
        print(f"data bar crops: {cropped} of {report.imported} images (NEU has no data bars)")
        print(f"second import of the same folder: {seconds_again:.2f} s, {again.summary()}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
