"""Does static int8 quantisation change NEU answers? The adoption rule of issue 12, measured.

    python benchmarks/onnx_int8_accuracy.py --library L [--encoder efficientnet-lite0-imagenet+d4] [--calib 30]

``L`` is a library with NEU imported (``nmid import --library L ../shared/data/neu_cls``). The int8
graph (QDQ, per-channel weights, MinMax calibration on ``--calib`` of the library's own images) is
built from the fp32 graph; its embeddings are cached under their own key (``...+int8``), never mixed
with fp32 ones. Both encoders are evaluated with the kNN and logistic-regression predictors on the
hard split and on a stratified 5-fold, and the script counts the images whose answer changes from
right (fp32) to wrong (int8). Rule: adopt int8 only if no hard-split image goes right -> wrong and at
most 9 of the 1,800 NEU images do in 5-fold.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--encoder", default="efficientnet-lite0-imagenet+d4")
    parser.add_argument("--calib", type=int, default=30)
    parser.add_argument("--work", type=Path, default=Path("/tmp/nmid-int8"))
    args = parser.parse_args(argv)

    import numpy as np
    from onnx_throughput import int8_encoder

    from nmid_desktop.core.images import model_input
    from nmid_desktop.core.jobs import run_job
    from nmid_desktop.core.store import open_library
    from nmid_desktop.evaluation.runner import EvalOptions, evaluate
    from nmid_desktop.inference.loader import load_encoder
    from nmid_desktop.inference.preprocess import resize_square
    from nmid_desktop.ml.views import ViewAveragedEncoder, split_views

    base_name, views = split_views(args.encoder)
    fp32 = load_encoder(base_name, engine="onnxruntime")
    with open_library(args.library, create=False) as store:
        records = list(store.iter_images())
        rng = np.random.default_rng(0)
        picked = [records[i] for i in rng.choice(len(records), args.calib, replace=False)]
        calib = np.stack([resize_square(model_input(r.path, r.page, r.crop_box), fp32.input_size) for r in picked])
        start = time.perf_counter()
        int8 = int8_encoder(fp32, calib, args.work)
        int8.key = f"{fp32.key}+int8"  # its own cache key: never mixed with fp32 embeddings
        int8.name = f"{fp32.name}-int8"  # and its own name in the evaluation's results
        print(f"int8 graph from {args.calib} library images in {time.perf_counter() - start:.0f} s")
        reference = load_encoder(args.encoder, engine="onnxruntime")
        quantised = ViewAveragedEncoder(int8, views) if views else int8
        encoders: dict[str, Any] = {reference.name: reference, quantised.name: quantised}
        for split in ("hard", "kfold"):
            result = run_job(evaluate(store, EvalOptions(encoders=tuple(encoders), split=split, folds=5,
                                                         strategies=("similarity",), ks=(5,)),
                                      encoder_loader=encoders.__getitem__))
            by_key = {(r.config.encoder, r.config.predictor): r for r in result.results}
            for predictor in ("knn", "logreg"):
                ref, q = by_key[reference.name, predictor], by_key[quantised.name, predictor]
                truth = dict(zip(ref.image_ids, ref.true_labels, strict=True))
                right = {i for i, p in zip(ref.image_ids, ref.predicted, strict=True) if p == truth[i]}
                wrong_q = {i for i, p in zip(q.image_ids, q.predicted, strict=True) if p != truth[i]}
                worse = sorted(right & wrong_q)
                print(f"{split:5s} {predictor:6s}: top-1 fp32 {ref.metrics.top1:.4f}, int8 {q.metrics.top1:.4f}; "
                      f"right -> wrong {len(worse)} of {len(ref.image_ids)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
