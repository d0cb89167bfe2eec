"""Novelty score, leave-one-class-out: AUROC (mean and worst of the classes) and false alarms.

Usage:
    python benchmarks/novelty_loco.py --library /work/neu-lib [--encoder NAME] [--seed 0]
        [--neighbours 1] [--threshold 0.98]

Protocol (issue 13): each class is left out in turn. The library holds the other classes
less 20 % of their images (stratified, seeded); the queries are those held-out 20 % (known:
negatives) and every image of the left-out class (novel: positives). Each query's predicted
class is the library's kNN vote (K = 5); its novelty score compares its nearest-neighbour
similarity with the library's own (``predict.novelty.NoveltyModel``). Printed: AUROC per class,
their mean and worst, and the share of known queries flagged at the default threshold
(targets: mean AUROC >= 0.95, false alarms <= 5 %). Embeddings come from the library's cache.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _labelled import add_library_args, labelled_vectors  # noqa: E402

from nmid_desktop.predict.calibration import knn_oof_probabilities  # noqa: E402
from nmid_desktop.predict.knn import KnnPredictor  # noqa: E402
from nmid_desktop.predict.novelty import DEFAULT_NEIGHBOURS, DEFAULT_THRESHOLD, NoveltyModel  # noqa: E402


def knn_top1(queries: np.ndarray, library: np.ndarray, labels: list[str], classes: list[str], k: int = 5) -> list[str]:
    """The kNN vote's class for each query (exact search)."""
    knn = KnnPredictor()
    sims = queries @ library.T
    top = np.argsort(-sims, axis=1)[:, :k]
    return [classes[int(np.argmax(knn.probabilities([labels[j] for j in nb], sims[r, nb], classes)))]
            for r, nb in enumerate(top)]


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_library_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", type=float, default=0.2, help="share of each known class held out")
    parser.add_argument("--neighbours", type=int, default=DEFAULT_NEIGHBOURS)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    args = parser.parse_args(argv)
    _, labels, vectors, encoder = labelled_vectors(args.library, args.encoder)
    y = np.asarray(labels)
    classes = sorted(set(labels))
    rng = np.random.default_rng(args.seed)
    held = np.zeros(len(y), dtype=bool)
    for c in classes:
        members = np.flatnonzero(y == c)
        held[rng.choice(members, size=int(round(args.held_out * len(members))), replace=False)] = True
    print(f"library {args.library}: {len(y)} images, {len(classes)} classes; encoder {encoder}; "
          f"neighbours {args.neighbours}, threshold {args.threshold}")
    aurocs, alarms = [], []
    for out in classes:
        lib = (y != out) & ~held
        known_q = (y != out) & held
        novel_q = y == out
        lib_labels = [str(c) for c in y[lib]]
        lib_classes = sorted(set(lib_labels))
        model = NoveltyModel(vectors[lib], lib_labels, m=args.neighbours, threshold=args.threshold)
        q = known_q | novel_q
        predicted = knn_top1(vectors[q], vectors[lib], lib_labels, lib_classes)
        scores = model.scores(vectors[q], vectors[lib], predicted)
        truth = novel_q[q]
        auroc = float(roc_auc_score(truth, scores))
        alarm = float((scores[~truth] > args.threshold).mean())
        caught = float((scores[truth] > args.threshold).mean())
        aurocs.append(auroc)
        alarms.append(alarm)
        print(f"  left out {out:<18} AUROC {auroc:.4f}  false alarms {alarm:.3f} ({int(round(alarm * (~truth).sum()))}"
              f"/{int((~truth).sum())})  novel flagged {caught:.3f}")
    # Sanity: the library's own leave-one-out kNN confidence, to set the figures beside accuracy.
    oof = knn_oof_probabilities(vectors, labels, classes, 5)
    print(f"AUROC mean {np.mean(aurocs):.4f}, worst {min(aurocs):.4f}; false alarms at {args.threshold}: "
          f"mean {np.mean(alarms):.3f}, worst {max(alarms):.3f}; (kNN LOO top-1 on all classes "
          f"{float((np.array(classes)[oof.argmax(1)] == y).mean()):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
