"""Issue 13 point 7, one attempt: does averaging the kNN vote and the probe help? (Not adopted.)

Usage:
    python benchmarks/knn_probe_combo.py --library /work/neu-lib [--encoder NAME] [-k 5]

Evaluates kNN (K similar demonstrations), the logistic probe, and their equal-weight mean of
probabilities on the hard split and on stratified 5-fold, with ``evaluation.runner`` (the
combination is registered here only, not in the app). Prints top-1 and macro-F1 per split.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmid_desktop.core.jobs import run_job  # noqa: E402
from nmid_desktop.core.store import open_library  # noqa: E402
from nmid_desktop.evaluation.runner import (  # noqa: E402
    PREDICTORS,
    EvalOptions,
    PredictorSpec,
    QueryData,
    TrainData,
    evaluate,
    register_predictor,
)
from nmid_desktop.predict.ranking import Ranking  # noqa: E402


def combo(train: TrainData, queries: QueryData) -> list[Ranking]:
    """Mean of the kNN vote's and the probe's probabilities."""
    knn = PREDICTORS["knn"].predict(train, queries)
    probe = PREDICTORS["logreg"].predict(train, queries)
    out = []
    for a, b in zip(knn, probe, strict=True):
        classes = sorted(set(a.labels) | set(b.labels))
        out.append(Ranking.from_scores({c: (a.probability(c) + b.probability(c)) / 2 for c in classes},
                                       predictor="knn+logreg"))
    return out


def main(argv: list[str] | None = None) -> int:
    from nmid_desktop.core.config import load_settings
    from nmid_desktop.ml.encoders import resolve_encoder_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--encoder", default=None)
    parser.add_argument("-k", type=int, default=5)
    args = parser.parse_args(argv)
    register_predictor(PredictorSpec("knn+logreg", combo, True, "mean of the kNN vote and the probe"))
    for split in ("hard", "kfold"):
        with open_library(args.library, create=False) as store:
            encoder = args.encoder or resolve_encoder_name(store, load_settings())
            options = EvalOptions(encoders=(encoder,), predictors=("knn", "logreg", "knn+logreg"),
                                  strategies=("similarity",), ks=(args.k,), split=split)
            result = run_job(evaluate(store, options))
        text = ", ".join(f"{r.config.predictor} {r.metrics.top1:.4f} (F1 {r.metrics.macro_f1:.4f})"
                         for r in result.results)
        print(f"{split}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
