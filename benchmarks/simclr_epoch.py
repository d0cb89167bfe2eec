"""Seconds per SimCLR epoch of an encoder on an image folder (default: micrograph-vit on all of NEU).

Runs the real training job (``nmid_desktop.ml.simclr.train_simclr``) with the paper's
settings (batch 48, 10 % validation) for a few epochs and prints, per epoch, the wall
time, the training and validation losses and the images per second, then the mean
epoch time. Image decoding happens once before the first epoch and is timed apart.

    python benchmarks/simclr_epoch.py --data ../shared/data/neu_cls --epochs 1 --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nmid_desktop.ml  # noqa: E402,F401  (sets OpenMP passive waiting before torch loads)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "neu_cls")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--encoder", default="micrograph-vit")
    parser.add_argument("--init", default="scratch", choices=("scratch", "imagenet"))
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the job's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    args = parser.parse_args()

    import torch

    from nmid_desktop.ml.simclr import train_simclr

    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if args.limit:
        files = files[: args.limit]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"{len(files)} images from {args.data}; encoder {args.encoder} ({args.init}); device {args.device}; "
          f"GPU {gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads; {os.cpu_count()} cpu cores")
    with tempfile.TemporaryDirectory(prefix="nmid-simclr-") as out:
        job = train_simclr(
            files, out_dir=Path(out), encoder_name=args.encoder, init=args.init, epochs=args.epochs,
            batch_size=args.batch_size, device=args.device, num_workers=args.workers,
            early_stop_patience=10**6,
        )
        start = time.perf_counter()
        load_s = None
        try:
            while True:
                progress = next(job)
                data = progress.data or {}
                if data.get("phase") == "load" and progress.done == progress.total:
                    load_s = time.perf_counter() - start
                    print(f"decoded {progress.total} images once in {load_s:.1f} s", flush=True)
                elif data.get("phase") == "epoch":
                    val = "-" if data["val_loss"] is None else f"{data['val_loss']:.4f}"
                    print(f"epoch {data['epoch']}: {data['seconds']:.1f} s  loss {data['train_loss']:.4f}  val {val}  "
                          f"lr {data['lr']:.1e}  device {data['device']}", flush=True)
        except StopIteration as stop:
            result = stop.value
    times = [h["seconds"] for h in result.history]
    print(f"{args.encoder} SimCLR on {result.device}: {sum(times) / len(times):.1f} s per epoch "
          f"({result.n_train} training + {result.n_val} validation images, batch {args.batch_size}; "
          f"{result.n_train / (sum(times) / len(times)):.0f} training images/s incl. validation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
