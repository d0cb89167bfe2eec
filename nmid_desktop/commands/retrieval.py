"""Retrieval commands: ``nmid index``, ``similar``, ``classify``, ``evaluate``.

``nmid classify`` takes image files and folders (searched recursively; only regular files
are read, anything else is reported and skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from nmid_desktop.commands._common import (
    EXIT_CODES,
    ProgressLine,
    add_library_arg,
    add_refresh_arg,
    batch_exit_code,
    drive,
    open_store,
    refresh_client,
)
from nmid_desktop.core.config import load_settings
from nmid_desktop.core.errors import LabelError, NmidError

_PREDICTOR_CHOICES = ("local", "lmm", "both")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the retrieval commands to ``nmid``."""
    p = subparsers.add_parser(
        "index",
        help="build or refresh the library's nearest-neighbour index; check its recall and speed",
        description="Embed labelled images that lack embeddings and build the Annoy index of the library's "
        "encoder (only when missing, stale or drifted). --check compares Annoy's recall@10 with exact search "
        "and prints query-latency percentiles (embedding excluded).",
    )
    add_library_arg(p)
    p.add_argument("--rebuild", action="store_true", help="rebuild even if the index on disk is usable")
    p.add_argument("--check", action="store_true", help="print recall@10 against exact search and latency")
    p.add_argument("--queries", type=int, default=200, metavar="N", help="queries for --check (default 200)")
    p.add_argument("--encoder", metavar="NAME", default=None, help="encoder (default: the library's)")
    p.set_defaults(func=_cmd_index)

    p = subparsers.add_parser(
        "similar",
        help="show the labelled images most similar to an image file",
        description="Print the top-K demonstrations for an image: library id, label, cosine similarity, "
        "who set the label, and the file.",
    )
    add_library_arg(p)
    p.add_argument("image", type=Path, metavar="IMG", help="an image file")
    p.add_argument("-k", type=int, default=None, help="how many (default: settings' k)")
    p.add_argument("--strategy", choices=("similarity", "random"), default=None, help="default: settings' strategy")
    p.add_argument("--seed", type=int, default=None, help="seed for --strategy random")
    p.add_argument("--encoder", metavar="NAME", default=None, help="encoder (default: the library's)")
    p.set_defaults(func=_cmd_similar)

    p = subparsers.add_parser(
        "classify",
        help="classify image files or folders with the local predictor and/or the multimodal model",
        description="Print each image's ranking (top 5 with probabilities). The local predictor works offline; "
        "'lmm' and 'both' ask the configured OpenAI-compatible endpoint with K retrieved demonstrations. "
        "A folder is searched recursively for images; links, FIFOs and devices are reported and skipped. "
        "An image unlike the library (novelty past the threshold) gets the line 'unlike your library: "
        "nearest X, typical Y' instead of a confident label; the suggestion follows, marked not trusted.",
        epilog=f"{EXIT_CODES[0].upper()}{EXIT_CODES[1:]}. Here: 1 when any image could not be read or "
        "classified, or was skipped in a folder.",
    )
    add_library_arg(p)
    p.add_argument("images", nargs="+", type=Path, metavar="IMG|FOLDER", help="image files and/or folders of images")
    p.add_argument("--predictor", choices=_PREDICTOR_CHOICES, default=None, help="default: settings' predictor")
    p.add_argument("--local", choices=("knn", "logreg"), default=None, help="local predictor (default: settings')")
    p.add_argument("-k", type=int, default=None, help="demonstrations (default: settings' k)")
    p.add_argument("--save", action="store_true",
                   help="store the predictions (files not yet in the library are imported, unlabelled)")
    p.add_argument("--dry-run", action="store_true", help="lmm: print the cost estimate and send nothing")
    p.add_argument("--json", action="store_true",
                   help="local predictor: one JSON object per image (label, calibrated ranking, novelty, trusted)")
    add_refresh_arg(p)
    p.add_argument("--encoder", metavar="NAME", default=None, help="encoder (default: the library's)")
    p.set_defaults(func=_cmd_classify)

    from nmid_desktop.evaluation.runner import DEFAULT_KS, PREDICTORS, SPLITS
    from nmid_desktop.lmm import evaluation as lmm_evaluation

    lmm_evaluation.register()  # the model predictor is composed in here, not imported by the runner
    p = subparsers.add_parser(
        "evaluate",
        help="measure top-k accuracy of encoders x predictors x strategies x K on the library's labels",
        description="Ablations in one run on the library's accepted labels: every encoder x predictor x "
        "demonstration strategy x K. Test images come from the paper's hard split (the hardest 10%% of each "
        "class by pixel-space clustering), a stratified k-fold, or the stored split; demonstrations come from "
        "the training part only. Embeddings are cached in the library, so a second run is fast.",
    )
    add_library_arg(p)
    p.add_argument("--encoder", nargs="+", metavar="NAME", default=None,
                   help="encoders (default: the library's); NAME+flip, NAME+flips or NAME+d4 average the "
                   "embedding over 2, 4 or 8 flipped/rotated views")
    p.add_argument("--predictor", nargs="+", metavar="NAME", default=["knn", "logreg"],
                   help=f"predictors: {', '.join(PREDICTORS)} (default: knn logreg)")
    p.add_argument("--strategy", nargs="+", choices=("similarity", "random"), default=["similarity", "random"])
    p.add_argument("-k", nargs="+", type=int, default=list(DEFAULT_KS), metavar="K", help="default: 1 3 5 10")
    p.add_argument("--split", choices=SPLITS, default="hard", help="test split (default: hard)")
    p.add_argument("--folds", type=int, default=5, help="folds for --split kfold / group-kfold (default 5)")
    p.add_argument("--groups", metavar="FIELD", default=None,
                   help="--split group-kfold: keep each specimen/session together; groups from folder:N (the "
                   "N-th folder above the file), name:REGEX (first group of a file-name pattern) or "
                   "manifest:CSV:COLUMN")
    p.add_argument("--test-fraction", type=float, default=0.1, help="hard split: test share per class (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic", action="store_true", help="add accepted synthetic images to the training parts")
    p.add_argument("--save-split", action="store_true", help="store the hard split in the library")
    p.add_argument("--json", type=Path, metavar="PATH", default=None, help="write every metric as JSON")
    p.add_argument("--figure", type=Path, metavar="PATH", default=None, help="write a PNG figure")
    add_refresh_arg(p)
    p.set_defaults(func=_cmd_evaluate)


def _classifier(store: Any, args: argparse.Namespace) -> Any:
    from nmid_desktop.predict.service import Classifier

    return Classifier(store, load_settings(), encoder=getattr(args, "encoder", None))


def _check_files(paths: list[Path]) -> None:
    from nmid_desktop.core.fileio import regular_file_problem
    from nmid_desktop.core.text import printable

    for path in paths:
        # One check for every path given: a FIFO or a link to /dev/zero is refused, never read.
        problem = regular_file_problem(path)
        if problem is not None:
            detail = problem if problem.startswith("is ") else f"is not a file ({problem})"
            raise NmidError(f"{printable(str(path))} {detail}")


def _folder_images(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The images under ``folder`` (recursive, sorted) and the entries that cannot be read, with why.

    Linked folders are followed once (a link loop is reported, not followed again); hidden
    entries are left out; a file is an image by its suffix and is kept only when it is a
    regular file (:func:`~nmid_desktop.core.fileio.regular_file_problem`).
    """
    from nmid_desktop.core.fileio import regular_file_problem
    from nmid_desktop.core.images import SUPPORTED_SUFFIXES

    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    seen: set[str] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        real = os.path.realpath(current)
        if real in seen:
            problems.append((current, "is a link to a folder already searched (a loop?), not searched again"))
            continue
        seen.add(real)
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            problems.append((current, f"cannot read folder ({exc.strerror or exc})"))
            continue
        subfolders: list[Path] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                subfolders.append(path)
            elif path.suffix.lower() in SUPPORTED_SUFFIXES:
                problem = regular_file_problem(path)
                if problem is None:
                    files.append(path)
                else:
                    problems.append((path, problem))
        stack.extend(reversed(subfolders))
    return files, problems


def _expand_images(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files given, and folders' images; the folders' unreadable entries with why.

    Raises:
        NmidError: A file given by name is not a regular file, or a folder holds no image.
    """
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            found, bad = _folder_images(path)
            if not found and not bad:
                from nmid_desktop.core.text import printable

                raise NmidError(f"{printable(str(path))}: no images (.png, .jpg, .tif, .bmp) in this folder")
            files += found
            problems += bad
        else:
            _check_files([path])
            files.append(path)
    return files, problems


# -- nmid index ------------------------------------------------------------------------
def _cmd_index(args: argparse.Namespace) -> int:
    from nmid_desktop.index.annoy_index import check_index

    with open_store(args, create=False) as store:
        clf = _classifier(store, args)
        started = time.perf_counter()
        drive(clf.rebuild_index() if args.rebuild else clf.prepare())
        if clf.needs_rebuild:
            drive(clf.rebuild_index())
        elapsed = time.perf_counter() - started
        searcher = clf.searcher
        index = searcher.index if searcher is not None else None
        if index is None:
            print(f"library {store.root}: no labelled images to index")
            return 0
        meta = index.meta
        print(f"index: {index.path}")
        print(f"encoder: {meta.encoder_key} ({meta.dim}-d); {len(index)} images, {meta.n_trees} trees, "
              f"built {meta.built_at} (annoy {meta.annoy_version}); {elapsed:.1f} s")
        print(f"since the build: {len(searcher.buffer)} images in the exact buffer, "
              f"{searcher.drift - len(searcher.buffer)} no longer labelled")
        if args.check:
            ids, vectors = store.get_embeddings(meta.encoder_key, list(index.ids))
            row = {int(i): n for n, i in enumerate(ids.tolist())}
            if len(row) != len(index):
                raise NmidError("some indexed images lost their cached embeddings: run `nmid index --rebuild`")
            ordered = vectors[[row[int(i)] for i in index.ids]]
            result = check_index(index, ordered, n_queries=args.queries, search_k=searcher.search_k)
            print(result.summary())
            latencies = []
            for q in ordered[: min(args.queries, len(ordered))]:
                t0 = time.perf_counter()
                clf.similar(q, 10, "similarity")
                latencies.append(time.perf_counter() - t0)
            p50, p95, p99 = (np.percentile(latencies, p) * 1e3 for p in (50, 95, 99))
            print(f"full retrieval (index + buffer + current labels): p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms")
    return 0


# -- nmid similar ----------------------------------------------------------------------
def _source_text(record: Any) -> str:
    return record.original_path or str(record.path)


def _cmd_similar(args: argparse.Namespace) -> int:
    from nmid_desktop.core.store.base import ImageFilter

    _check_files([args.image])
    with open_store(args, create=False) as store:
        clf = _classifier(store, args)
        vector = clf.embed_file(args.image)
        own = clf.library_image(args.image)
        demos = clf.similar(vector, args.k, args.strategy, exclude_ids=[own.id] if own else (), rng=args.seed)
        if own is not None:
            print(f"{args.image} is library image {own.id} ({own.label or 'unlabelled'}); it is left out")
        if not demos:
            print("no labelled images in the library yet")
            return 0
        records = {r.id: r for r in store.images(ImageFilter(ids=[d.image_id for d in demos]))}
        width = max(len(d.label) for d in demos)
        print(f"{'#':>3}  {'id':>6}  {'label':<{width}}  {'cosine':>7}  {'source':<9}  file")
        for n, d in enumerate(demos, 1):
            tag = d.source + ("*" if d.synthetic else "")
            file = _source_text(records[d.image_id]) if d.image_id in records else "?"
            print(f"{n:>3}  {d.image_id:>6}  {d.label:<{width}}  {d.similarity:7.4f}  {tag:<9}  {file}")
        if any(d.synthetic for d in demos):
            print("* synthetic image (accepted)")
    return 0


# -- nmid classify ---------------------------------------------------------------------
def _ranking_text(items: list[tuple[str, float]], n: int = 5) -> str:
    return ", ".join(f"{label} {p:.3f}" for label, p in items[:n])


def _assessment_text(path: str, assessment: Any, how: str, *, as_json: bool = False, left_out: bool = False) -> str:
    """What ``nmid classify`` prints for one local prediction.

    A known image: its calibrated ranking, then how like the library it is. An image unlike
    the library: the badge first, in place of the label, and the suggestion after it, marked
    not trusted (a percentage on an image the library has never seen is not a confidence).
    """
    if as_json:
        return json.dumps({"path": path, "predictor": how, "itself_left_out": left_out, **assessment.to_dict()})
    novelty, ranking = assessment.novelty, assessment.ranking
    if novelty is None:  # not with wait=True, what the command uses
        return f"{path}: {ranking.top1} ({how}): {_ranking_text(list(ranking.items))}"
    if novelty.novel:
        return (f"{path}: {novelty.text} (novelty {novelty.score:.2f})\n"
                f"  not trusted: nearest class {ranking.top1} ({how}): {_ranking_text(list(ranking.items), 3)}")
    return (f"{path}: {ranking.top1} ({how}): {_ranking_text(list(ranking.items))}\n"
            f"  {novelty.text} (novelty {novelty.score:.2f})")


def _import_for_saving(store: Any, paths: list[Path]) -> dict[Path, int]:
    """Library ids of the files, importing (unlabelled) those not yet there."""
    from nmid_desktop.core.importer import import_files

    settings = load_settings()
    report = drive(import_files(store, paths, None, max_pixels=settings.max_pixels,
                                detect_bar=settings.crop_data_bar))
    ids = {Path(item.path): item.image_id for item in report.items if item.image_id is not None and item.page == 0}
    for item in report.items:
        if item.image_id is None:
            raise NmidError(f"{item.path}: cannot be saved: {item.reason}")
    return ids


def _cmd_classify(args: argparse.Namespace) -> int:
    from nmid_desktop.core.jobs import Progress
    from nmid_desktop.core.text import printable

    settings = load_settings()
    predictor = args.predictor or settings.predictor
    if args.json and predictor != "local":
        raise NmidError("--json covers the local predictor only: add --predictor local")
    images, failures = _expand_images(list(args.images))
    for path, reason in failures:
        print(f"nmid: {printable(str(path))}: skipped: {reason}", file=sys.stderr)
    with open_store(args, create=False) as store:
        clf = _classifier(store, args)
        if args.verbose:
            enc = clf.encoder
            print(f"encoder {enc.key}: engine {enc.engine}, device {enc.device} ({enc.runtime})", file=sys.stderr)
        ids: dict[Path, int] = _import_for_saving(store, images) if args.save else {}
        if predictor in ("local", "both"):
            local = args.local or settings.local_predictor
            line = ProgressLine()
            try:
                for done, path in enumerate(images):
                    line(Progress(done, len(images), printable(path.name)))
                    try:
                        vector = clf.embed_file(path)
                        own = clf.library_image(path)
                        exclude = [own.id] if own is not None and own.label is not None else []
                        assessment = clf.assess(vector, local, args.k, exclude_ids=exclude)
                    except NmidError as exc:
                        failures.append((path, str(exc)))
                        if line.tty:
                            line.close()
                        print(f"nmid: {printable(str(path))}: failed: {printable(str(exc))}", file=sys.stderr)
                        continue
                    ranking = assessment.ranking  # calibrated on the library (predict/calibration.py)
                    if line.tty:
                        line.close()  # the result line replaces the progress line
                    left_out = bool(exclude) and local == "knn"
                    how = local if args.json or not left_out else f"{local} (itself left out)"
                    print(_assessment_text(printable(str(path)), assessment, how, as_json=args.json,
                                           left_out=left_out))
                    if args.save:
                        store.add_prediction(ranking.to_prediction(ids[path], model=clf.encoder.key))
                line(Progress(len(images), len(images), "classified"))
            finally:
                line.close()
        if predictor in ("lmm", "both"):
            failed = [path for path, _ in failures]
            code = _classify_lmm(store, clf, args, settings, ids, [p for p in images if p not in failed])
            return max(code, batch_exit_code(failures, None))
    return batch_exit_code(failures, None)


def _classify_lmm(store: Any, clf: Any, args: argparse.Namespace, settings: Any, ids: dict[Path, int],
                  images: list[Path]) -> int:
    try:
        from nmid_desktop.lmm.predict import predict_images
    except ImportError as exc:
        raise NmidError(f"the lmm predictor needs an endpoint: its module is unavailable ({exc})") from None
    if args.k:
        settings.k = args.k
    items: list[Any] = [ids.get(path, path) for path in images]
    client = refresh_client(args, settings)
    try:
        batch = drive(predict_images(store, clf, items, settings, dry_run=args.dry_run, client=client))
    finally:
        if client is not None:
            client.close()
    if batch.dry_run:
        print(f"estimate: {batch.estimate.summary()} (nothing sent)")
        return 0
    for prediction in batch:
        label = prediction.label if prediction.valid else f"invalid ({prediction.reason})"
        print(f"{prediction.item}: {label} (lmm {prediction.model}): {_ranking_text(list(prediction.ranking))}")
        if prediction.rationale:
            print(f"  why: {prediction.rationale}")
    for item, reason in batch.failures:
        print(f"{item}: failed: {reason}")
    if batch.stopped == "budget":
        print("stopped: the budget (lmm.budget_usd) would be exceeded")
    return batch_exit_code(batch.failures, batch.stopped)


# -- nmid evaluate ---------------------------------------------------------------------
def _evaluate_refreshing(store: Any, options: Any, args: argparse.Namespace) -> Any:
    """Run an evaluation with the lmm predictor; with ``--refresh`` its client never serves cached answers."""
    import dataclasses

    from nmid_desktop.evaluation.runner import evaluate, register_predictor
    from nmid_desktop.lmm.evaluation import LMM_PREDICTOR, predict_lmm

    client = refresh_client(args, load_settings())
    if client is None:
        return drive(evaluate(store, options))
    # The runner's registry is global: the refreshing predictor stands in for this run only.
    register_predictor(dataclasses.replace(
        LMM_PREDICTOR, predict=lambda train, queries: predict_lmm(train, queries, client=client)
    ))
    try:
        return drive(evaluate(store, options))
    finally:
        register_predictor(LMM_PREDICTOR)
        client.close()


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nmid_desktop.evaluation import report
    from nmid_desktop.evaluation.runner import EvalOptions, evaluate

    with open_store(args, create=False) as store:
        if args.encoder:
            encoders = tuple(args.encoder)
        else:
            from nmid_desktop.inference.loader import resolve_encoder_name

            encoders = (resolve_encoder_name(store, load_settings()),)
        options = EvalOptions(
            encoders=encoders,
            predictors=tuple(args.predictor),
            strategies=tuple(args.strategy),
            ks=tuple(args.k),
            split=args.split,
            folds=args.folds,
            test_fraction=args.test_fraction,
            seed=args.seed,
            include_synthetic=args.synthetic,
            save_split=args.save_split,
            groups=args.groups,
        )
        if len(store.labelled(include_pending=False)) < 2:
            raise LabelError("the library needs accepted labels to evaluate on")
        result = _evaluate_refreshing(store, options, args) if "lmm" in options.predictors else drive(evaluate(store, options))
    print(report.format_table(result))
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    print(f"time: {timings}")
    if args.json:
        print(f"json: {report.write_json(result, args.json)}")
    if args.figure:
        print(f"figure: {report.write_figure(result, args.figure)}")
    return 0
