"""Torch against ONNX Runtime, side by side in one run: throughput, and drop-to-demonstrations latency.

    python benchmarks/onnx_throughput.py [--data DIR] [-n 96] [--batches 1 8 32] [--repeat 3]
                                         [--int8] [--drops 12] [--large 20000] [--skip-drop]

1. **Throughput of plain EfficientNet-Lite0** for each engine: the torch path as the app
   runs it (BatchNorm folded, channels-last, compute batches of 8), ONNX Runtime fp32, and
   with ``--int8`` a static int8 graph (QDQ, per channel, calibrated on library images).
   At each batch size: *network only* (``embed_prepared`` on resized uint8 images,
   normalisation included) and *with decoding* (``embed_paths`` on the JPEG files: decode,
   data bar detection, resize, network). Cosine of each engine's embeddings to torch's.
2. **Drop to demonstrations** with the default encoder (EfficientNet-Lite0 +d4, the 8 views
   as one batch) on the demo library (300 images, embedded for real) and on a larger
   library (``--large``), for each engine, in stages: decode (read, data bar, crop,
   resize), embed, search (demonstrations + kNN prediction over Annoy + buffer). Headless:
   the window adds import and drawing (``benchmarks/gui_drop_latency.py``). The large
   library's images are real generated micrographs, but only the demo library's are
   embedded by the network; the others get the embedding of a demo image of their class
   plus noise (re-normalised), because 20,000 x 8 network passes take most of an hour on
   2 cores and search time depends only on the count and length of the vectors.

Targets (issue 12): ORT fp32 >= 1.5x torch at batch 8; >= 150 img/s with decoding;
drop-to-demonstrations median < 100 ms at both library sizes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import nmid_desktop.ml  # noqa: E402,F401  (sets OpenMP passive waiting before torch loads)

LITE0 = "efficientnet-lite0-imagenet"


def _sample(data: Path, n: int) -> list[Path]:
    classes = sorted(p for p in data.iterdir() if p.is_dir())
    per_class = [sorted(c.glob("*.*")) for c in classes]
    picked: list[Path] = []
    i = 0
    while len(picked) < n and any(i < len(files) for files in per_class):
        picked.extend(files[i] for files in per_class if i < len(files))
        i += 1
    return picked[:n]


def _drain(job: Any) -> Any:
    try:
        while True:
            next(job)
    except StopIteration as stop:
        return stop.value


def _rate(fn: Callable[[], int], repeat: int) -> float:
    """Median images per second over ``repeat`` runs of ``fn`` (which returns its image count)."""
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def _cos(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    c = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(c.min()), float(c.mean())


def int8_encoder(fp32: Any, calibration: np.ndarray, out: Path) -> Any:
    """A static int8 copy of an ONNX Runtime encoder (QDQ, per-channel weights, MinMax calibration).

    Args:
        fp32: The fp32 ``OnnxEncoder``.
        calibration: ``(N, S, S)`` uint8 resized library images.
        out: Folder for the quantised graph.
    """
    import dataclasses
    import json

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from nmid_desktop.inference.graph import GRAPH_FORMAT, INPUT_NAME, sidecar_path
    from nmid_desktop.inference.onnx_encoder import OnnxEncoder
    from nmid_desktop.ml.manifest import file_sha256

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{INPUT_NAME: fp32.to_input(calibration[i : i + 1])} for i in range(len(calibration))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    out.mkdir(parents=True, exist_ok=True)
    pre = out / "pre.onnx"
    quant_pre_process(str(fp32.graph.path), str(pre), skip_symbolic_shape=True)
    target = out / "int8.onnx"
    quantize_static(str(pre), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    sha = file_sha256(target)
    sidecar_path(target).write_text(json.dumps({"format": GRAPH_FORMAT, "weights_sha256": fp32.manifest.sha256,
                                                "graph_sha256": sha}))
    graph = dataclasses.replace(fp32.graph, path=target, sha256=sha, origin="int8 (benchmark)")
    encoder = OnnxEncoder(fp32.manifest, graph)
    encoder.engine = "onnxruntime int8"
    return encoder


def throughput(args: argparse.Namespace, work: Path) -> None:
    from nmid_desktop.core.images import read_image
    from nmid_desktop.inference.loader import load_encoder
    from nmid_desktop.inference.preprocess import resize_square
    from nmid_desktop.ml.embed import embed_paths

    paths = _sample(args.data, args.n)
    prepared = np.stack([resize_square(read_image(p).view8, 224) for p in paths])  # (n, 224, 224) uint8
    engines: dict[str, Any] = {
        "torch": load_encoder(LITE0, engine="torch", device="cpu"),
        "onnxruntime fp32": load_encoder(LITE0, engine="onnxruntime"),
    }
    if args.int8:
        calib = np.stack([resize_square(read_image(p).view8, 224) for p in _sample(args.data, 300)[-args.calib:]])
        start = time.perf_counter()
        engines["onnxruntime int8"] = int8_encoder(engines["onnxruntime fp32"], calib, work / "int8")
        print(f"int8 graph: static QDQ, per channel, {len(calib)} calibration images not in the timed sample, "
              f"built in {time.perf_counter() - start:.0f} s")
    for encoder in engines.values():
        encoder.embed_prepared(prepared[:8])  # warm-up: first runs allocate and tune
    reference = engines["torch"].embed_prepared(prepared)
    print(f"\n## Throughput, plain {LITE0}: {len(paths)} NEU images (200 x 200 JPEG), images/s, median of "
          f"{args.repeat}")
    for name, encoder in engines.items():
        lo, mean = _cos(encoder.embed_prepared(prepared), reference)
        print(f"{name:18s} {getattr(encoder, 'runtime', '')}; cosine to torch min {lo:.5f} mean {mean:.5f}")
    header = f"{'engine':18s}" + "".join(f" | net b={b:<3d} | +decode b={b:<3d}" for b in args.batches)
    print(header)
    rates: dict[tuple[str, int, str], float] = {}
    for name, encoder in engines.items():
        row = f"{name:18s}"
        for b in args.batches:
            def net(encoder: Any = encoder, b: int = b) -> int:
                for start in range(0, len(prepared), b):
                    encoder.embed_prepared(prepared[start : start + b])
                return len(prepared)

            def decode(encoder: Any = encoder, b: int = b) -> int:
                _drain(embed_paths(encoder, paths, batch_size=b))
                return len(paths)

            rates[name, b, "net"] = _rate(net, args.repeat)
            rates[name, b, "dec"] = _rate(decode, args.repeat)
            row += f" | {rates[name, b, 'net']:9.1f} | {rates[name, b, 'dec']:12.1f}"
        print(row, flush=True)
    for name in engines:
        if name == "torch":
            continue
        ratios = ", ".join(f"b={b}: {rates[name, b, 'net'] / rates['torch', b, 'net']:.2f}x net, "
                           f"{rates[name, b, 'dec'] / rates['torch', b, 'dec']:.2f}x +decode" for b in args.batches)
        print(f"{name} / torch: {ratios}")


def _stage_times(clf: Any, encoder: Any, queries: Sequence[Path], k: int) -> dict[str, list[float]]:
    from nmid_desktop.core.databar import find_micrograph_box
    from nmid_desktop.core.images import crop, read_image

    times: dict[str, list[float]] = {"decode": [], "embed": [], "search": [], "total": []}
    for path in queries:
        t0 = time.perf_counter()
        view8 = read_image(path).view8
        image = encoder.preprocess(crop(view8, find_micrograph_box(view8)))
        t1 = time.perf_counter()
        vector = encoder.embed_prepared(image[None])[0]  # the 8 views: one batch
        t2 = time.perf_counter()
        clf.similar(vector, k)
        clf.predict_local(vector, "knn", k)
        t3 = time.perf_counter()
        for stage, seconds in zip(("decode", "embed", "search", "total"), (t1 - t0, t2 - t1, t3 - t2, t3 - t0),
                                  strict=True):
            times[stage].append(seconds * 1e3)
    return times


def _large_library(store: Any, demo_store: Any, key: str, n: int, work: Path) -> None:
    """Fill ``store`` with ``n`` generated images whose vectors derive from the demo library's."""
    from nmid_desktop.core.demo import DEMO_CLASSES, generate_demo
    from nmid_desktop.core.importer import import_folder

    start = time.perf_counter()
    per_class = -(-n // len(DEMO_CLASSES))
    _drain(generate_demo(work / "large-images", per_class=per_class, seed=77, size=64))
    _drain(import_folder(store, work / "large-images", layout="imagefolder"))
    demo_ids = [r.id for r in demo_store.iter_images()]
    ids, vectors = demo_store.get_embeddings(key, demo_ids)
    by_class: dict[str, list[np.ndarray]] = {}
    for image_id, vector in zip(ids.tolist(), vectors, strict=True):
        by_class.setdefault(str(demo_store.get_image(image_id).label), []).append(vector)
    rng = np.random.default_rng(0)
    records = list(store.iter_images())
    derived = np.empty((len(records), vectors.shape[1]), np.float32)
    for row, record in enumerate(records):
        pool = by_class[str(record.label)]
        v = pool[row % len(pool)] + rng.normal(0, 0.01, vectors.shape[1]).astype(np.float32)
        derived[row] = v / np.linalg.norm(v)
    store.put_embeddings(key, [r.id for r in records], derived)
    print(f"large library: {len(records):,} images generated and imported, derived vectors, "
          f"{time.perf_counter() - start:.0f} s", flush=True)


def drop_latency(args: argparse.Namespace, work: Path) -> None:
    from nmid_desktop.core.config import Settings
    from nmid_desktop.core.demo import generate_demo
    from nmid_desktop.core.importer import import_folder
    from nmid_desktop.core.store import open_library
    from nmid_desktop.inference.loader import DEFAULT_ENCODER, load_encoder
    from nmid_desktop.predict.service import Classifier

    engines = {"torch": load_encoder(DEFAULT_ENCODER, engine="torch", device="cpu"),
               "onnxruntime": load_encoder(DEFAULT_ENCODER, engine="onnxruntime")}
    key = engines["onnxruntime"].key
    assert key == engines["torch"].key
    reuse = (work / "demo-lib").is_dir()
    if not reuse:
        _drain(generate_demo(work / "demo", per_class=60, seed=1, size=256))
    demo = open_library(work / "demo-lib")
    if not reuse:
        _drain(import_folder(demo, work / "demo", layout="imagefolder"))
    start = time.perf_counter()
    _drain(Classifier(demo, Settings(), encoder=engines["onnxruntime"]).prepare())
    print(f"\n## Drop to demonstrations, {DEFAULT_ENCODER} (8 views as one batch), ms per query")
    print(f"demo library: {demo.count_images()} images embedded (onnxruntime) and indexed in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    libraries = [("demo", demo)]
    if args.large:
        reuse = (work / "large-lib").is_dir()
        large = open_library(work / "large-lib")
        if not reuse:
            _large_library(large, demo, key, args.large, work)
        libraries.append((f"{large.count_images():,}", large))
    made = _drain(generate_demo(work / f"queries-{time.time_ns()}", per_class=-(-args.drops // 5), seed=999, size=256))
    queries = [path for path, _ in made][: args.drops]
    for lib_name, store in libraries:
        for name, encoder in engines.items():
            clf = Classifier(store, Settings(), encoder=encoder)
            _drain(clf.prepare())
            _stage_times(clf, encoder, queries[:2], 5)  # warm-up
            times = _stage_times(clf, encoder, queries, 5)
            parts = "  ".join(f"{stage} {statistics.median(v):6.1f} (p90 {np.percentile(v, 90):6.1f})"
                              for stage, v in times.items())
            print(f"{lib_name:>7s} library, {name:12s}: {parts}", flush=True)
            if clf.searcher is not None:
                clf.searcher.close()
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "neu_cls")
    parser.add_argument("-n", type=int, default=96, help="images timed per setting")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--int8", action="store_true", help="also time a static int8 graph")
    parser.add_argument("--calib", type=int, default=30, help="int8 calibration images")
    parser.add_argument("--drops", type=int, default=12)
    parser.add_argument("--large", type=int, default=20_000, help="images of the large library (0: none)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the libraries, reused by later runs (default: a new temporary one)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-drop", action="store_true")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="nmid-bench-onnx-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("NMID_CONFIG_DIR", "NMID_DATA_DIR"):
        os.environ[name] = str(work / name.lower())
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"cpu cores {os.cpu_count()}, torch {torch.__version__} threads {torch.get_num_threads()}, "
          f"load average {load:.2f} at start; graphs cached in {os.environ.get('NMID_CACHE_DIR', 'the user cache')}")
    if not args.skip_throughput:
        throughput(args, work)
    if not args.skip_drop:
        drop_latency(args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
