"""Ray start-up time with the options ``cluster/ray_embed.py`` uses, and with a smaller object store.

Usage:
    python benchmarks/ray_startup.py [--reps 2]

Prints, per variant and repetition (variants alternate so load changes hit both), the seconds
``ray.init`` took and the seconds until two trivial tasks returned (worker start-up).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

COMMON = {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
VARIANTS = {"current": COMMON, "+object_store 256MB": {**COMMON, "object_store_memory": 256 * 2**20}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_worker_niceness", "0")  # as cluster/ray_embed.py
    import ray

    @ray.remote
    def one() -> int:
        return 1

    for _ in range(args.reps):
        for name, options in VARIANTS.items():
            t0 = time.perf_counter()
            ray.init(**options)
            t1 = time.perf_counter()
            ray.get([one.remote() for _ in range(2)])
            t2 = time.perf_counter()
            ray.shutdown()
            print(f"{name:<22} init {t1 - t0:5.1f} s, first 2 tasks {t2 - t1:5.1f} s", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
