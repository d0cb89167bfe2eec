"""Review commands: ``nmid review errors`` (likely mislabelled) and ``nmid review next`` (label these next)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from nmid_desktop.commands._common import add_library_arg, drive, open_store
from nmid_desktop.core.config import load_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``nmid review`` and its sub-commands."""
    p = subparsers.add_parser(
        "review",
        help="review queues: likely label errors, and which unlabelled images to label next",
        description="Queues that point an expert at the images where a decision helps most.",
    )
    sub = p.add_subparsers(dest="review_command", metavar="QUEUE")
    sub.required = True
    e = sub.add_parser(
        "errors",
        help="labelled images whose label is likely wrong (confident learning, cleanlab)",
        description="Confident learning (cleanlab find_label_issues) on out-of-fold probabilities of the "
        "local probe over the labelled library. Lists id, original file name, current label, suggested "
        "label and a score (higher: more likely wrong), most likely first.",
    )
    add_library_arg(e)
    e.add_argument("--predictor", choices=("logreg", "knn"), default="logreg",
                   help="whose out-of-fold probabilities (default: logreg, the probe)")
    e.add_argument("--limit", type=int, default=None, metavar="N", help="print at most N")
    e.add_argument("--json", action="store_true", help="print a JSON list")
    e.add_argument("--encoder", metavar="NAME", default=None, help="encoder (default: the library's)")
    e.set_defaults(func=_cmd_errors)
    n = sub.add_parser(
        "next",
        help="unlabelled images ordered by how much a label would help",
        description="Unlabelled images ordered by the kNN vote's margin (most uncertain first), skipping "
        "near-copies of images already picked, so that the top of the list is varied.",
    )
    add_library_arg(n)
    n.add_argument("--limit", type=int, default=20, metavar="N", help="print at most N (default 20; 0: all)")
    n.add_argument("-k", type=int, default=None, help="neighbours of the kNN vote (default: settings' k)")
    n.add_argument("--json", action="store_true", help="print a JSON list")
    n.add_argument("--encoder", metavar="NAME", default=None, help="encoder (default: the library's)")
    n.set_defaults(func=_cmd_next)


def _classifier(store: Any, args: argparse.Namespace) -> Any:
    from nmid_desktop.predict.service import Classifier

    return Classifier(store, load_settings(), encoder=args.encoder, include_pending=True)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


def _cmd_errors(args: argparse.Namespace) -> int:
    from nmid_desktop.predict.review import label_suspects

    with open_store(args, create=False) as store:
        suspects = label_suspects(_classifier(store, args), args.predictor)
    if args.limit:
        suspects = suspects[: args.limit]
    if args.json:
        print(json.dumps([s.to_dict() for s in suspects], indent=1))
        return 0
    if not suspects:
        print("no likely label errors found")
        return 0
    print(_table(["id", "name", "label", "suggested", "score"],
                 [[str(s.image_id), s.name, s.label, s.suggested, f"{s.score:.3f}"] for s in suspects]))
    print(f"{len(suspects)} likely label errors (confident learning on out-of-fold {args.predictor} probabilities)")
    return 0


def _cmd_next(args: argparse.Namespace) -> int:
    from nmid_desktop.predict.review import labelling_queue

    with open_store(args, create=False) as store:
        queue = drive(labelling_queue(_classifier(store, args), k=args.k, limit=args.limit or None))
    if args.json:
        print(json.dumps([c.to_dict() for c in queue], indent=1))
        return 0
    if not queue:
        print("no unlabelled images")
        return 0
    print(_table(["#", "id", "name", "predicted", "margin"],
                 [[str(n), str(c.image_id), c.name, c.predicted, f"{c.margin:.3f}"] for n, c in enumerate(queue, 1)]))
    return 0
