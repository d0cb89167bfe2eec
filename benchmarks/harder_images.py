"""Issue 13 point 7: do tiled embeddings or class-balanced predictors help on harder images?

Usage:
    nice -n 10 python benchmarks/harder_images.py --library L
        [--attempts tiles2x2 tiles3x3 balanced] [--cache /tmp/hard-cache]

One table, every attempt side by side against the baseline (the default encoder
``efficientnet-lite0-imagenet+d4`` on ONNX Runtime, whole field of view shrunk to 224 px):

* NEU (200 x 200 px, balanced): hard-split top-1 and stratified 5-fold top-1, read from the
  library's embedding cache (``--library``, an import of NEU).
* ``large``: a demo library drawn at 1280 x 960 with fine structure (features at their
  256 px sizes, so the 224 px view holds them at a fifth of their size) and data bars,
  5 classes x 40.
* ``imbal``: the same kind of images with imbalanced classes (64 / 32 / 16 / 10 / 6).

On the demo proxies: 5-fold top-1, balanced accuracy (mean per-class recall, for the
imbalanced one) and the top-1 of the *hardest 10 % of each class*: the images with the
lowest out-of-fold margin (probability of the true class minus the best other class) under
the baseline with the same predictor. Both rows are scored on that one fixed subset.

Attempts (``--attempts``):

* ``tiles2x2`` / ``tiles3x3``: the unit mean of the whole view's embedding (d4, as today)
  and the mean of the embeddings of a 2 x 2 / 3 x 3 grid of tiles (one view each), each
  tile shrunk from nearer its native scale. Images under twice the network input (NEU's
  200 px) get no tiles: the attempt is the baseline there by construction.
* ``balanced``: class-balanced predictors on the baseline embeddings: the logistic probe
  with ``class_weight="balanced"``; the kNN vote with each neighbour's weight divided by its
  class's count in the library.

Predictors: the kNN vote (K = 5, T = 0.07, the window's default) and the logistic probe.
Latency: median of 6 embeddings of one 1280 x 960 query (decode excluded; all views as one
batch) on ONNX Runtime, attempts interleaved. Embeddings are cached per attempt under ``--cache``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmid_desktop.core.databar import find_micrograph_box  # noqa: E402
from nmid_desktop.core.demo import generate_custom_demo  # noqa: E402
from nmid_desktop.core.images import read_image  # noqa: E402
from nmid_desktop.core.jobs import run_job  # noqa: E402
from nmid_desktop.inference.preprocess import l2_normalise  # noqa: E402
from nmid_desktop.ml.tiles import tile_grid  # noqa: E402
from nmid_desktop.predict.knn import KnnPredictor  # noqa: E402
from nmid_desktop.predict.probe import ProbePredictor  # noqa: E402

ENCODER = "efficientnet-lite0-imagenet+d4"
ATTEMPTS = ("baseline", "tiles2x2", "tiles3x3", "balanced")
PROXIES = {
    "large": dict(seed=11, counts=(40, 40, 40, 40, 40)),
    "imbal": dict(seed=12, counts=(64, 32, 16, 10, 6)),
}
K = 5


@dataclass
class Data:
    """Embeddings of one data set under one attempt, with its labels and test splits."""

    vectors: np.ndarray  # (N, D)
    labels: np.ndarray  # (N,)
    folds: list[np.ndarray]  # test masks
    hard: np.ndarray | None = None  # NEU's hard-split test mask


# ----------------------------------------------------------------------------- predictors


def knn_probs(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: list[str],
              balanced: bool) -> np.ndarray:
    """kNN vote (exact cosine, K nearest). Shape: (Q, C)."""
    knn = KnnPredictor()
    sims = test_x @ train_x.T
    top = np.argsort(-sims, axis=1)[:, :K]
    counts = {c: int((train_y == c).sum()) for c in classes}
    out = np.zeros((len(test_x), len(classes)))
    for q in range(len(test_x)):
        labels = train_y[top[q]]
        s = sims[q, top[q]]
        if balanced:  # weight exp(s/T) / n_class, through the log so the vote stays one call
            s = s - knn.temperature * np.log([counts[label] for label in labels])
        out[q] = knn.probabilities(list(labels), s, classes)
    return out


def probe_probs(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: list[str],
                balanced: bool) -> np.ndarray:
    """Logistic probe. Shape: (Q, C)."""
    probe = ProbePredictor(balanced=balanced).fit(train_x, list(train_y))
    got, probs = probe.predict_proba(test_x)
    out = np.zeros((len(test_x), len(classes)))
    for j, c in enumerate(got):
        out[:, classes.index(c)] = probs[:, j]
    return out


PREDICT: dict[str, Callable[..., np.ndarray]] = {"knn": knn_probs, "logreg": probe_probs}


_OOF: dict[tuple[int, str, bool, int], np.ndarray] = {}


def out_of_fold(data: Data, predictor: str, balanced: bool, masks: Sequence[np.ndarray]) -> np.ndarray:
    """Probabilities for every tested image (rows of untested images stay NaN). Shape: (N, C).

    Memoised per (vectors, predictor, balanced, split): an attempt that leaves a set's
    embeddings unchanged (tiles on NEU) reuses the baseline's fits.
    """
    memo = (id(data.vectors), predictor, balanced, id(masks[0]))
    if memo in _OOF:
        return _OOF[memo]
    classes = sorted(set(data.labels))
    probs = np.full((len(data.labels), len(classes)), np.nan)
    for test in masks:
        probs[test] = PREDICT[predictor](data.vectors[~test], data.labels[~test], data.vectors[test], classes,
                                         balanced)
    _OOF[memo] = probs
    return probs


def scores(probs: np.ndarray, labels: np.ndarray, subset: np.ndarray | None = None) -> tuple[float, float]:
    """(top-1, balanced accuracy) over the rows of ``subset`` (default: all tested rows)."""
    classes = sorted(set(labels))
    tested = ~np.isnan(probs[:, 0]) if subset is None else subset
    pred = np.array(classes)[np.argmax(probs[tested], axis=1)]
    truth = labels[tested]
    top1 = float(np.mean(pred == truth))
    recalls = [float(np.mean(pred[truth == c] == c)) for c in classes if np.any(truth == c)]
    return top1, float(np.mean(recalls))


def margins(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p(true class) - max p(other class). Shape: (N,)."""
    classes = sorted(set(labels))
    idx = np.array([classes.index(c) for c in labels])
    true = probs[np.arange(len(labels)), idx]
    other = probs.copy()
    other[np.arange(len(labels)), idx] = -np.inf
    return true - other.max(axis=1)


def hardest(margin: np.ndarray, labels: np.ndarray, fraction: float = 0.10) -> np.ndarray:
    """The ``fraction`` of each class with the lowest margin (at least one). Shape: (N,) bool."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = max(1, int(round(fraction * len(members))))
        mask[members[np.argsort(margin[members], kind="stable")[:n]]] = True
    return mask


# ----------------------------------------------------------------------------- embeddings


def load_views(folder: Path) -> tuple[list[Path], np.ndarray]:
    """Image files of an ImageFolder tree and their labels."""
    paths = sorted(folder.glob("*/*.png"))
    return paths, np.array([p.parent.name for p in paths])


def model_view(path: Path) -> np.ndarray:
    """What the encoders see: the 8-bit view with the data bar cropped off."""
    view = read_image(path).view8
    x0, y0, x1, y1 = find_micrograph_box(view)
    return view[y0:y1, x0:x1]


def cached(path: Path, make: Callable[[], np.ndarray]) -> np.ndarray:
    if path.exists():
        return np.load(path)
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, value)
    return value


def tile_embeddings(encoder: object, base: object, views: list[np.ndarray], grid: int) -> np.ndarray:
    """Mean unit embedding of each image's tiles (one view each). Shape: (N, D); zero rows: no tiles."""
    out = np.zeros((len(views), base.dim), dtype=np.float32)  # type: ignore[attr-defined]
    for i, view in enumerate(views):
        tiles = tile_grid(view, base.input_size, grid)  # type: ignore[attr-defined]
        if tiles:
            out[i] = l2_normalise(base.embed(tiles).mean(axis=0, keepdims=True))[0]  # type: ignore[attr-defined]
    return out


def combine(whole: np.ndarray, tiles: np.ndarray) -> np.ndarray:
    """Unit mean of the whole view's and the tiles' embeddings; the whole view alone without tiles."""
    has = np.linalg.norm(tiles, axis=1, keepdims=True) > 0
    return l2_normalise(np.where(has, whole + tiles, whole))


def proxy_data(name: str, cache: Path, encoder: object, attempts: Sequence[str]) -> dict[str, Data]:
    from nmid_desktop.evaluation.splits import stratified_folds

    spec = PROXIES[name]
    folder = cache / name
    if not folder.exists():
        print(f"drawing the {name} proxy ({sum(spec['counts'])} images at 1280 x 960) ...", flush=True)
        part = folder.with_name(folder.name + ".part")
        run_job(generate_custom_demo(part, spec["counts"], seed=spec["seed"], size=1280, height=960, fine=True))
        part.rename(folder)
    paths, labels = load_views(folder)
    views: list[np.ndarray] = []

    def get_views() -> list[np.ndarray]:
        if not views:
            views.extend(model_view(p) for p in paths)
        return views

    folds = stratified_folds(list(labels), 5, seed=0)
    whole = cached(cache / "emb" / f"{name}-whole-d4.npy", lambda: encoder.embed(get_views()))  # type: ignore[attr-defined]
    out = {"baseline": Data(whole, labels, folds), "balanced": Data(whole, labels, folds)}
    for attempt in attempts:
        if attempt.startswith("tiles"):
            grid = int(attempt[len("tiles")])
            tiles = cached(cache / "emb" / f"{name}-tiles{grid}.npy",
                           lambda g=grid: tile_embeddings(encoder, encoder.base, get_views(), g))  # type: ignore[attr-defined]
            out[attempt] = Data(combine(whole, tiles), labels, folds)
    return out


def neu_data(library: Path, attempts: Sequence[str]) -> dict[str, Data]:
    """NEU from a library's cache; tiles are a no-op at 200 px (checked in the tests), so reuse."""
    from nmid_desktop.core.store import open_library
    from nmid_desktop.evaluation import splits

    with open_library(library, create=False) as store:
        labelled = dict(store.labelled(include_pending=False, include_synthetic=False))
        encoder_key = f"efficientnet-lite0-imagenet@{_sha12()}+d4"
        ids, vectors = store.get_embeddings(encoder_key, sorted(labelled))
        if len(ids) < 10:
            raise SystemExit(f"{library}: no cached {encoder_key} embeddings; run `nmid embed --library {library}` first")
        labels = np.array([labelled[int(i)] for i in ids])
        pixels = run_job(splits.pixel_features(store, [int(i) for i in ids]))
    hardness = splits.hardness_scores(pixels, list(labels), seed=0)
    hard = splits.hard_test_mask(hardness, list(labels), [int(i) for i in ids])
    folds = splits.stratified_folds(list(labels), 5, seed=0)
    data = Data(np.asarray(vectors, dtype=np.float32), labels, folds, hard)
    return dict.fromkeys(("baseline", *attempts), data)


def _sha12() -> str:
    from nmid_desktop.ml.manifest import load_manifest

    return str(load_manifest("efficientnet-lite0-imagenet").sha256)[:12]


def latencies(encoder: object, attempts: Sequence[str], cache: Path, rounds: int = 7) -> dict[str, tuple[int, float]]:
    """(network passes, median ms) to embed one 1280 x 960 query per attempt, all views as one batch.

    Attempts are timed in turn within each round, so a busy machine slows them alike; the
    first round is a warm-up.
    """
    from nmid_desktop.inference.preprocess import symmetric_views

    base = encoder.base  # type: ignore[attr-defined]
    view = model_view(sorted((cache / "large").glob("*/*.png"))[0])
    times: dict[str, list[float]] = {a: [] for a in attempts}
    passes: dict[str, int] = {}
    for _ in range(rounds):
        for attempt in attempts:
            grid = int(attempt[len("tiles")]) if attempt.startswith("tiles") else 0
            start = time.perf_counter()
            whole = symmetric_views(base.preprocess(view)[None], "d4")
            tiles = [base.preprocess(t) for t in tile_grid(view, base.input_size, grid)] if grid else []
            batch = np.concatenate([whole, np.stack(tiles)]) if tiles else whole
            base.embed_prepared(batch)
            times[attempt].append((time.perf_counter() - start) * 1000)
            passes[attempt] = len(batch)
    return {a: (passes[a], statistics.median(times[a][1:])) for a in attempts}


# ----------------------------------------------------------------------------- table


def main(argv: list[str] | None = None) -> int:
    from nmid_desktop.inference.loader import load_encoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, required=True, help="a library with NEU imported")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/hard-cache"))
    parser.add_argument("--attempts", nargs="+", choices=ATTEMPTS[1:], default=["tiles2x2", "balanced"])
    args = parser.parse_args(argv)
    encoder = load_encoder(ENCODER, engine="onnxruntime")
    sets = {"neu": neu_data(args.library, args.attempts)}
    for name in PROXIES:
        sets[name] = proxy_data(name, args.cache, encoder, args.attempts)
    header = (f"{'attempt':10} {'pred':6} | {'NEU hard':>8} {'NEU 5f':>7} | {'large':>6} {'hard10':>6} | "
              f"{'imbal':>6} {'bal.acc':>7} {'hard10':>6} | {'passes':>6} {'ms/query':>8}")
    print(header)
    print("-" * len(header))
    costs = latencies(encoder, ("baseline", *args.attempts), args.cache)
    for predictor in ("knn", "logreg"):
        base_oof = {n: out_of_fold(d["baseline"], predictor, False, d["baseline"].folds) for n, d in sets.items()}
        subsets = {n: hardest(margins(base_oof[n], sets[n]["baseline"].labels), sets[n]["baseline"].labels)
                   for n in PROXIES}
        for attempt in ("baseline", *args.attempts):
            balanced = attempt == "balanced"
            cells = []
            neu = sets["neu"][attempt]
            assert neu.hard is not None
            hard_probs = out_of_fold(neu, predictor, balanced, [neu.hard])
            cells.append(f"{scores(hard_probs, neu.labels)[0]:8.4f}")
            oof = base_oof["neu"] if attempt == "baseline" else out_of_fold(neu, predictor, balanced, neu.folds)
            cells.append(f"{scores(oof, neu.labels)[0]:7.4f} |")
            for name in PROXIES:
                data = sets[name][attempt]
                oof = base_oof[name] if attempt == "baseline" else out_of_fold(data, predictor, balanced, data.folds)
                top1, bal = scores(oof, data.labels)
                hard_top1 = scores(oof, data.labels, subsets[name])[0]
                cells.append(f"{top1:6.4f}" + (f" {bal:7.4f}" if name == "imbal" else "") + f" {hard_top1:6.4f} |")
            passes, ms = costs[attempt]
            cells.append(f"{passes:6d} {ms:8.0f}")
            print(f"{attempt:10} {predictor:6} | " + " ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
