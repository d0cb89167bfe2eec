"""``nmid train``: self-supervised (SimCLR) training of an encoder on the library's images."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Generator
from typing import Any

from nmid_desktop.commands._common import add_library_arg, drive, library_path, open_store
from nmid_desktop.core.jobs import Job, Progress
from nmid_desktop.workspace.training import TrainingRequest, training_job, training_sources

ENCODER_CHOICES = ("micrograph-vit", "efficientnet-lite0-imagenet")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``nmid train``."""
    parser = subparsers.add_parser(
        "train",
        help="train an encoder self-supervised (SimCLR) on the library's images",
        description=(
            "Train an encoder with SimCLR on the library's images (labels are not used). Rejected images, "
            "synthetic images not accepted by an expert, and images of a fixed test split are left out. "
            "The encoder is written to <library>/models/; --use makes it the library's encoder."
        ),
    )
    parser.add_argument("--encoder", choices=ENCODER_CHOICES, default="micrograph-vit",
                        help="architecture: the paper's ViT from scratch (default) or EfficientNet-Lite0 fine-tuned")
    parser.add_argument("--init", choices=("auto", "scratch", "imagenet"), default="auto",
                        help="start from random weights or ImageNet weights (auto: ViT scratch, EfficientNet imagenet)")
    parser.add_argument("--epochs", type=int, default=50, help="maximum epochs (default 50)")
    parser.add_argument("--batch-size", type=int, default=48, help="images per batch (default 48)")
    parser.add_argument("--lr", type=float, default=None,
                        help="Adam learning rate (default 1e-3 from scratch, 1e-4 from ImageNet)")
    parser.add_argument("--temperature", type=float, default=0.1, help="NT-Xent temperature (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default=None, help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--include-test", action="store_true", help="also train on images of the fixed test split")
    parser.add_argument("--use", action="store_true", help="make the trained encoder the library's encoder")
    add_library_arg(parser)
    parser.set_defaults(func=run)


def _print_epochs(job: Job[Any]) -> Generator[Progress, None, Any]:
    """Pass a training job's progress through, printing one line per finished epoch."""
    try:
        while True:
            try:
                progress = next(job)
            except StopIteration as stop:
                return stop.value
            data = progress.data or {}
            if data.get("phase") == "epoch":
                val = "-" if data["val_loss"] is None else f"{data['val_loss']:.4f}"
                print(
                    f"epoch {data['epoch']:3d}  loss {data['train_loss']:.4f}  val {val}  lr {data['lr']:.2e}  "
                    f"{data['seconds']:.1f} s  eta {data['eta_s'] / 60:.1f} min  {data['device']}",
                    flush=True,
                )
            yield progress
    finally:
        job.close()


def run(args: argparse.Namespace) -> int:
    """Train, write ``<library>/models/<name>.json``, optionally select it."""
    init = args.init
    if init == "auto":
        init = "scratch" if args.encoder == "micrograph-vit" else "imagenet"
    library = library_path(args)
    request = TrainingRequest(
        encoder_name=args.encoder, init=init, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        temperature=args.temperature, seed=args.seed, device=args.device, include_test=args.include_test,
        use_when_done=args.use,
    )
    with open_store(args, create=False) as store:
        n = len(training_sources(store, include_test=args.include_test))
    print(f"training {args.encoder} ({init}) on {n} images of {library}", flush=True)
    result = drive(_print_epochs(training_job(library, request)))
    stop = " (stopped early)" if result.stopped_early else ""
    print(
        f"wrote {result.manifest_path} ({result.key}){stop}: best epoch {result.best_epoch}, "
        f"{result.monitored} {result.best_loss:.4f}, {result.seconds / 60:.1f} min on {result.device}"
    )
    if result.graph_path is not None:
        print(f"wrote {result.graph_path} (ONNX graph for the onnxruntime engine)")
    for source, reason in result.failed[:10]:
        print(f"skipped {source}: {reason}", file=sys.stderr)
    if len(result.failed) > 10:
        print(f"... and {len(result.failed) - 10} more unreadable images", file=sys.stderr)
    if args.use:
        print(f"the library now uses encoder {result.name}; embeddings are recomputed on next use")
    return 0
