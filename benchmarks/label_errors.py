"""Likely label errors: plant 5 % wrong labels, measure precision@N and recall@2N of the suspects.

Usage:
    python benchmarks/label_errors.py --library /work/neu-lib [--encoder NAME] [--seeds 0 1 2]
        [--rate 0.05] [--predictor logreg|knn]

For each seed, ``rate`` of the accepted labels (N images) are changed to another class drawn
at random; out-of-fold probabilities are computed on the noisy labels (the probe's 5-fold, or
the kNN vote with itself left out) and ranked by confident learning
(``predict.label_errors.rank_label_issues``: cleanlab's flagged issues first, then the rest by
label quality). Printed per seed and as the mean: precision among the top N suspects and recall
of the planted N among the top 2N (targets: both >= 0.8), and how many cleanlab flagged.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _labelled import add_library_args, labelled_vectors  # noqa: E402

from nmid_desktop.predict.calibration import oof_probabilities  # noqa: E402
from nmid_desktop.predict.label_errors import rank_label_issues  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_library_args(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--predictor", choices=("logreg", "knn"), default="logreg")
    args = parser.parse_args(argv)
    ids, labels, vectors, encoder = labelled_vectors(args.library, args.encoder)
    classes = sorted(set(labels))
    print(f"library {args.library}: {len(ids)} images, {len(classes)} classes; encoder {encoder}; "
          f"{args.rate:.0%} planted; out-of-fold {args.predictor}")
    precisions, recalls = [], []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        n = int(round(args.rate * len(labels)))
        planted = rng.choice(len(labels), size=n, replace=False)
        noisy = list(labels)
        for i in planted:
            noisy[i] = str(rng.choice([c for c in classes if c != labels[i]]))
        t0 = time.perf_counter()
        oof = oof_probabilities(args.predictor, vectors, noisy, classes, k=5, seed=seed)
        suspects = rank_label_issues(ids, noisy, oof, classes, include_unflagged=True)
        seconds = time.perf_counter() - t0
        planted_ids = set(ids[planted].tolist())
        ranked = [s.image_id for s in suspects]
        precision = len(planted_ids & set(ranked[:n])) / n
        recall = len(planted_ids & set(ranked[: 2 * n])) / n
        flagged = sum(1 for s in suspects if s.flagged)
        true_of = dict(zip(ids.tolist(), labels, strict=True))
        right = sum(1 for s in suspects[:n] if s.image_id in planted_ids and s.suggested == true_of[s.image_id])
        precisions.append(precision)
        recalls.append(recall)
        print(f"  seed {seed}: N {n}; precision@N {precision:.3f}, recall@2N {recall:.3f}; cleanlab flagged "
              f"{flagged}; true label suggested for {right} of the caught; {seconds:.1f} s")
    print(f"mean over {len(args.seeds)} seeds: precision@N {np.mean(precisions):.3f}, recall@2N {np.mean(recalls):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
