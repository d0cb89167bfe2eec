"""Per-query ``Classifier.assess`` cost right after a label change, at 2k and 20k labelled rows.

Before: ``assess(wait=True)`` refits the trust model (novelty reference and calibration) in
the query. After: ``assess(wait=False)``, what the window's labelling loop calls, uses the
previous fit (marked stale) while one background thread refits.

The library is a real SQLite library whose rows point (``copy=False``) at one tiny PNG, with
simulated clustered embeddings cached under a stand-in encoder key: no network runs, the
encoder is never called because every embedding is cached.

    python benchmarks/trust_refresh.py [--sizes 2000 20000] [--predictor knn] [--dim 256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from nmid_desktop.core.config import Settings
from nmid_desktop.core.store import open_library
from nmid_desktop.predict.service import Classifier


class CachedOnlyEncoder:
    """An encoder whose embeddings are all in the library's cache (it refuses to run)."""

    name = "simulated"
    key = "simulated-benchmark"
    input_size = 224
    engine = "none"
    runtime = "cached embeddings only"
    device = "cpu"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        raise RuntimeError("the benchmark's embeddings are all cached")

    def embed_prepared(self, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("the benchmark's embeddings are all cached")

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        raise RuntimeError("the benchmark's embeddings are all cached")


def simulated(n: int, dim: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Clustered unit vectors: ``classes`` centres, noise around each. Shape (n, dim)."""
    centres = rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    x = centres[y] + 0.9 * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [f"class{c}" for c in y]


def build(folder: Path, n: int, dim: int, seed: int) -> tuple[np.ndarray, list[str]]:
    png = folder / "pixel.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    rng = np.random.default_rng(seed)
    vectors, labels = simulated(n + 50, dim, 6, rng)
    with open_library(folder / "lib") as store, store.transaction():
        ids = [store.add_image(png, sha256=f"{i:064x}", page=0, n_pages=1, width=8, height=8, dtype="uint8",
                               copy=False)[0] for i in range(n + 50)]
        for i, label in zip(ids[:n], labels[:n], strict=True):
            store.set_label(i, label, source="import", review="accepted")
        store.put_embeddings(CachedOnlyEncoder.key, ids, vectors)
    return vectors[n:], labels[n:]


def measure(folder: Path, n: int, dim: int, predictor: str, queries: int, seed: int) -> tuple[float, float, float, float]:
    """(before ms, after ms, background refit s, steady ms) per query (steady: no label change)."""
    qv, _ = build(folder, n, dim, seed)
    settings = Settings()
    settings.local_predictor = predictor
    with open_library(folder / "lib", create=False) as store:
        clf = Classifier(store, settings, encoder=CachedOnlyEncoder(dim))  # type: ignore[arg-type]
        clf.assess(qv[0], predictor, wait=True)  # the first fit, as when the window opens
        steady = []
        for q in range(queries):
            start = time.perf_counter()
            clf.assess(qv[q + 1], predictor, wait=False)
            steady.append(time.perf_counter() - start)
        labelled = [i for i, _ in store.labelled(include_pending=True, include_synthetic=False)]
        before, after = [], []
        for q in range(queries):
            store.set_label(labelled[q], "class0" if q % 2 else "class1", source="expert", review="accepted")
            start = time.perf_counter()
            clf.assess(qv[q + 1], predictor, wait=True)
            before.append(time.perf_counter() - start)
        refit = 0.0
        for q in range(queries):
            store.set_label(labelled[q], "class2", source="expert", review="accepted")
            start = time.perf_counter()
            assessment = clf.assess(qv[q + 1], predictor, wait=False)
            after.append(time.perf_counter() - start)
            if not assessment.stale:
                raise SystemExit("expected a stale assessment right after a label change")
            start = time.perf_counter()
            clf.wait_for_trust()
            refit = max(refit, time.perf_counter() - start)
    return statistics.median(before) * 1000, statistics.median(after) * 1000, refit, statistics.median(steady) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--predictor", choices=("knn", "logreg"), default="knn")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            b, a, r, s = measure(Path(tmp), n, args.dim, args.predictor, args.queries, args.seed)
        print(f"assess after a label change, {n} labelled, {args.predictor}: before {b:.0f} ms/query "
              f"(refit in the query), after {a:.1f} ms/query (stale fit, refit {r:.1f} s in the background); "
              f"no label change {s:.1f} ms/query")


if __name__ == "__main__":
    main()
