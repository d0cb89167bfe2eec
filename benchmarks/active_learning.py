"""Labels-to-accuracy curves from one label per class: the labelling queue against random order.

Usage:
    python benchmarks/active_learning.py --library /work/neu-lib [--encoder NAME] [--seeds 0 1 2]
        [--batch 5] [--max-labels 600] [--predictor knn|logreg]

For each seed, 20 % of every class is held out as the test set; the rest is the unlabelled
pool, of which one image per class (drawn at random) starts labelled. Each round adds
``batch`` labels, in the order of ``predict.active.next_to_label`` (kNN margin with
diversity) or in random order, and measures top-1 on the test set with the chosen
predictor (default: the window's kNN vote, K = 5). Printed: labels needed to reach 0.95
and 0.98 top-1 for both orders (per seed and mean; "-" when not reached), and a coarse
curve.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _labelled import add_library_args, labelled_vectors  # noqa: E402

from nmid_desktop.predict.active import knn_margins, next_to_label  # noqa: E402
from nmid_desktop.predict.probe import ProbePredictor  # noqa: E402

TARGETS = (0.95, 0.98)


def accuracy(predictor: str, x: np.ndarray, y: list[str], test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Top-1 on the test set of a predictor trained on the labelled part."""
    if predictor == "knn":
        predicted, _ = knn_margins(test_x, x, y, k=5)
    else:
        predicted = [r.top1 for r in ProbePredictor().fit(x, y).rank_many(test_x)]
    return float((np.asarray(predicted) == test_y).mean())


def curve(order: str, seed: int, pool: np.ndarray, x: np.ndarray, y: np.ndarray, test: np.ndarray,
          args: argparse.Namespace) -> list[tuple[int, float]]:
    """(labels, top-1) after each round."""
    rng = np.random.default_rng([seed, 1])
    labelled = [int(rng.choice(pool[y[pool] == c])) for c in sorted(set(y.tolist()))]
    remaining = [int(i) for i in pool if int(i) not in set(labelled)]
    random_order = list(rng.permutation(remaining))
    points = []
    while True:
        acc = accuracy(args.predictor, x[labelled], [str(c) for c in y[labelled]], x[test], y[test])
        points.append((len(labelled), acc))
        if acc >= max(TARGETS) or len(labelled) >= args.max_labels or not remaining:
            break
        if order in ("active", "margin"):  # margin: the same queue without diversity (an ablation)
            queue = next_to_label(remaining, x[remaining], x[labelled], [str(c) for c in y[labelled]], k=5,
                                  top=args.batch if order == "active" else 0)
            picked = [c.image_id for c in queue[: args.batch]]
        else:
            still = set(remaining)
            picked = [i for i in random_order if i in still][: args.batch]
        labelled += picked
        taken = set(picked)
        remaining = [i for i in remaining if i not in taken]
    return points


def needed(points: list[tuple[int, float]], target: float) -> int | None:
    """Labels at the first round reaching ``target``."""
    return next((n for n, acc in points if acc >= target), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_library_args(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--max-labels", type=int, default=600)
    parser.add_argument("--predictor", choices=("knn", "logreg"), default="knn")
    parser.add_argument("--orders", nargs="+", choices=("active", "margin", "random"), default=["active", "random"],
                        help="active: margin with diversity (the queue); margin: without diversity; random")
    args = parser.parse_args(argv)
    _, labels, x, encoder = labelled_vectors(args.library, args.encoder)
    y = np.asarray(labels)
    print(f"library {args.library}: {len(y)} images; encoder {encoder}; predictor {args.predictor}; "
          f"batch {args.batch}; start: 1 label per class")
    results: dict[str, list[list[int | None]]] = {order: [] for order in args.orders}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        test = np.zeros(len(y), dtype=bool)
        for c in sorted(set(labels)):
            members = np.flatnonzero(y == c)
            test[rng.choice(members, size=int(round(0.2 * len(members))), replace=False)] = True
        pool = np.flatnonzero(~test)
        test_idx = np.flatnonzero(test)
        for order in args.orders:
            points = curve(order, seed, pool, x, y, test_idx, args)
            got = [needed(points, t) for t in TARGETS]
            results[order].append(got)
            marks = [p for p in points if p[0] in (6, 11, 21, 51, 101, 201, 301, 401, 501, 601)]
            text = ", ".join(f"{n}: {a:.3f}" for n, a in marks)
            print(f"  seed {seed} {order:<6}: labels to 0.95 {got[0] or '-'}, to 0.98 {got[1] or '-'}; curve {text}")
    for order, rows in results.items():
        parts = []
        for j, t in enumerate(TARGETS):
            vals = [r[j] for r in rows]
            mean = f"{np.mean([v for v in vals if v is not None]):.0f}" if all(v is not None for v in vals) else "-"
            parts.append(f"to {t}: {mean} (seeds {', '.join(str(v or '-') for v in vals)})")
        print(f"{order}: labels needed (mean) " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
