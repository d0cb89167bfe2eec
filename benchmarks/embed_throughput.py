"""Embedding throughput, decoding included: images per second for each encoder.

Imports N images of an ImageFolder set (default: 300 of ../shared/data/neu_cls, every
class) into a temporary library (not timed), then times ``embed_images`` from an empty
cache: JPEG decoding, the stored data bar crop, resizing and the network. It also times
``embed_paths`` (files outside the library: data bar detection included).
Images per CPU-second (this process and its workers) are printed too: on a machine
shared with other jobs the wall-clock figure drops, the CPU-time figure much less.
``micrograph-vit`` is timed with random weights unless --vit-manifest names trained
ones; throughput does not depend on the weights' values.

    python benchmarks/embed_throughput.py [--data DIR] [-n 300] [--device cpu] [--workers 0 1]
"""

from __future__ import annotations

import argparse
import os
import statistics

try:
    import resource
except ImportError:  # Windows
    resource = None
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nmid_desktop.ml  # noqa: E402,F401  (sets OpenMP passive waiting before torch loads)


def _sample(data: Path, n: int) -> list[Path]:
    classes = sorted(p for p in data.iterdir() if p.is_dir())
    per_class = [sorted(c.glob("*.*")) for c in classes]
    picked: list[Path] = []
    i = 0
    while len(picked) < n and any(i < len(files) for files in per_class):
        picked.extend(files[i] for files in per_class if i < len(files))
        i += 1
    return picked[:n]


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (DataLoader workers)."""
    if resource is None:
        return float("nan")
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _drain(job):
    try:
        while True:
            next(job)
    except StopIteration as stop:
        return stop.value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "neu_cls")
    parser.add_argument("-n", type=int, default=300, help="images to embed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[-1],
                        help="DataLoader workers to try (-1: the job's default)")
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="torch thread counts to try (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting; the median is printed")
    parser.add_argument("--encoders", nargs="+", default=["micrograph-vit", "efficientnet-lite0-imagenet"])
    parser.add_argument("--vit-manifest", type=Path, default=None, help="trained micrograph-vit manifest")
    args = parser.parse_args()

    import torch

    from nmid_desktop.core.importer import import_files
    from nmid_desktop.core.store import open_library
    from nmid_desktop.ml.device import pick_device
    from nmid_desktop.ml.embed import embed_images, embed_paths
    from nmid_desktop.ml.encoders import Encoder, build_network, load_encoder
    from nmid_desktop.ml.manifest import load_manifest

    default_threads = torch.get_num_threads()
    device = pick_device(args.device)
    paths = _sample(args.data, args.n)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(paths)} images from {args.data}; device {device}; cpu cores {os.cpu_count()}; "
          f"load average {load:.2f} before start")
    with tempfile.TemporaryDirectory(prefix="nmid-bench-") as tmp:
        store = open_library(Path(tmp) / "lib")
        _drain(import_files(store, paths, copy=False))
        ids = [r.id for r in store.iter_images()]
        for name in args.encoders:
            if name == "micrograph-vit" and args.vit_manifest is None:
                manifest = load_manifest("micrograph-vit")
                encoder = Encoder(manifest, build_network(manifest, load_weights=False), device)
            else:
                encoder = load_encoder(str(args.vit_manifest) if name == "micrograph-vit" else name, device=device)
            encoder.embed_prepared(torch.zeros(2, encoder.input_size, encoder.input_size, dtype=torch.uint8))  # warm-up
            for threads in args.threads:
                torch.set_num_threads(threads or default_threads)
                for workers in args.workers:
                    n_workers = None if workers < 0 else workers
                    rates, cpu_rates, file_rates = [], [], []
                    for _ in range(max(1, args.repeat)):
                        store.drop_embeddings(encoder.key)
                        start, cpu_start = time.perf_counter(), _cpu_seconds()
                        result = _drain(embed_images(store, encoder, ids, batch_size=args.batch_size,
                                                     num_workers=n_workers))
                        elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
                        rates.append(len(result[0]) / elapsed)
                        cpu_rates.append(len(result[0]) / cpu)
                        start = time.perf_counter()
                        _drain(embed_paths(encoder, paths, batch_size=args.batch_size, num_workers=n_workers))
                        file_rates.append(len(paths) / (time.perf_counter() - start))
                    label = "default" if n_workers is None else str(n_workers)
                    spread = f" [{min(rates):.0f}-{max(rates):.0f}]" if len(rates) > 1 else ""
                    print(f"{name:28s} threads {torch.get_num_threads()} workers {label:7s}: embed_images "
                          f"{statistics.median(rates):6.1f} images/s{spread} ({len(result[0])} images); "
                          f"{statistics.median(cpu_rates):6.1f} images per CPU-second; "
                          f"embed_paths (bar detection included) {statistics.median(file_rates):6.1f} images/s",
                          flush=True)
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
