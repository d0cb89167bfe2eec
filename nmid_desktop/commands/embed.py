"""``nmid embed``: embed the whole library, resumably, here or on a Ray cluster."""

from __future__ import annotations

import argparse

from nmid_desktop.commands._common import add_library_arg, drive, open_store
from nmid_desktop.core.config import load_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``nmid embed`` to ``nmid``."""
    p = subparsers.add_parser(
        "embed",
        help="embed every library image that lacks an embedding (resumable; local or on Ray)",
        description="Embed the library's images that have no cached embedding for the encoder and store them "
        "batch by batch, so an interrupted run resumes where it stopped. --engine ray runs decoding and the "
        "encoder on Ray Data (a local Ray, or the cluster at --address; needs pip install nmid-desktop[cluster]); "
        "the image files must be readable on every node.",
    )
    add_library_arg(p)
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="where the encoder runs (default local)")
    p.add_argument("--address", default=None, metavar="ADDRESS",
                   help="Ray cluster address (ray://HOST:10001 or auto); default: start a local Ray")
    p.add_argument("--num-cpus", type=int, default=2, metavar="N", help="CPUs of the local Ray (default 2)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per encoder batch (default 64)")
    p.add_argument("--encoder", metavar="NAME", default=None, help="encoder (default: the library's)")
    p.set_defaults(func=_cmd_embed)


def _cmd_embed(args: argparse.Namespace) -> int:
    from nmid_desktop.inference.loader import resolve_encoder_name
    from nmid_desktop.workspace.embedding import embed_library

    settings = load_settings()
    with open_store(args, create=False) as store:
        name = args.encoder or resolve_encoder_name(store, settings)
        report = drive(embed_library(store, name, engine=args.engine, address=args.address, num_cpus=args.num_cpus,
                                     batch_size=args.batch_size, crop=settings.crop_data_bar))
    print(report.summary())
    for image_id, reason in report.failed[:20]:
        print(f"  not embedded: image {image_id}: {reason}")
    if len(report.failed) > 20:
        print(f"  ... and {len(report.failed) - 20} more")
    return 1 if report.failed and not report.embedded else 0
