"""Library commands: ``nmid demo``, ``import``, ``stats``, ``label``, ``classes``, ``export``."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable
from pathlib import Path

from nmid_desktop.commands._common import EXIT_CODES, add_library_arg, batch_exit_code, drive, open_store
from nmid_desktop.core.config import load_settings
from nmid_desktop.core.errors import LibraryError, NmidError
from nmid_desktop.core.importer import LAYOUTS, NOT_AN_IMAGE, ImportReport, import_csv, import_files, import_folder
from nmid_desktop.core.store import LABEL_SOURCES, REVIEW_STATES, ImageFilter, ImageRecord, Store, open_library
from nmid_desktop.core.text import printable

_LIST_LIMIT = 20  # lines of duplicates / skipped files printed before "... and N more"


def _actor() -> str:
    """Who is acting: the settings' ``user`` (a name colleagues recognise), else the OS login."""
    from nmid_desktop.core.config import current_user

    return current_user()


def _size_text(n_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} GB"  # pragma: no cover


def folder_size(folder: Path) -> int:
    """Bytes of all files under ``folder`` (symlinks not followed)."""
    total = 0
    stack = [Path(folder)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


def _has_bar(image: ImageRecord) -> bool:
    """True when the image's crop box leaves part of the frame out: a data bar was found and is cropped."""
    box = image.crop_box
    return box is not None and tuple(box) != (0, 0, image.width, image.height)


def bar_counts(images: Iterable[ImageRecord]) -> tuple[int, int]:
    """``(data bars found and cropped, images checked for one)`` over ``images``.

    An image was checked when it has a crop box (the import's bar detection stores the
    full frame when it finds none); a bar was found when the box is smaller than the frame.
    """
    found = checked = 0
    for image in images:
        if image.crop_box is not None:
            checked += 1
            found += _has_bar(image)
    return found, checked


def bar_text(found: int, checked: int, total: int) -> str:
    """``data bars: N found and cropped (of M images checked; K not checked)``."""
    unchecked = total - checked
    rest = f"; {unchecked} not checked" if unchecked else ""
    return f"data bars: {found} found and cropped (of {checked} images checked{rest})"


def describe_library(store: Store) -> str:
    """A readable summary: images, classes with counts, label sources, review states, size on disk."""
    total = store.count_images()
    labelled = store.count_images(ImageFilter(unlabelled=False))
    synthetic = store.count_images(ImageFilter(synthetic=True))
    lines = [
        f"library: {store.location}",
        f"images: {total} ({labelled} labelled, {total - labelled} unlabelled, {synthetic} synthetic)",
    ]
    classes = store.classes()
    lines.append(f"classes: {len(classes)}")
    width = max((len(c.name) for c in classes), default=0)
    for c in classes:
        extra = f"  {c.description}" if c.description else ""
        lines.append(f"  {c.name:<{width}}  {c.count:>6}{extra}")
    sources = {s: store.count_images(ImageFilter(label_source=s)) for s in LABEL_SOURCES}
    lines.append("label sources: " + (", ".join(f"{s} {n}" for s, n in sources.items() if n) or "none"))
    reviews = {r: store.count_images(ImageFilter(review=r)) for r in REVIEW_STATES}
    lines.append("review: " + ", ".join(f"{r} {n}" for r, n in reviews.items()))
    keys = getattr(store, "embedding_keys", dict)()
    if keys:
        lines.append("embeddings: " + ", ".join(f"{k} ({n})" for k, n in keys.items()))
    split = store.get_split()
    if split:
        counts = {s: sum(1 for v in split.values() if v == s) for s in ("train", "val", "test")}
        lines.append("split: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    if total:
        lines.append(bar_text(*bar_counts(store.iter_images()), total))
    cost = store.total_cost()
    if cost:
        lines.append(f"API spending: ${cost:.2f}")
    images_bytes = folder_size(store.root / "images")
    database_bytes = getattr(store, "database_bytes", None)  # a server's database is not in the folder
    db_bytes = database_bytes() if database_bytes else folder_size(store.root) - images_bytes
    lines.append(
        f"size on disk: {_size_text(images_bytes + db_bytes)} "
        f"(images {_size_text(images_bytes)}, database {_size_text(db_bytes)})"
    )
    lines.append(f"labels version: {store.labels_version()}")
    return "\n".join(lines)


def format_import(report: ImportReport, store: Store | None = None) -> str:
    """The import summary with the duplicates and skipped files listed.

    Args:
        report: The import's report.
        store: The library imported into: with it, a line says how many data bars the
            imported images had (found and cropped).
    """
    lines = [report.summary()]
    if store is not None:
        new_ids = [item.image_id for item in report.items if item.status == "imported" and item.image_id is not None]
        if new_ids:
            chunks = (store.images(ImageFilter(ids=new_ids[i:i + 500])) for i in range(0, len(new_ids), 500))
            lines.append(bar_text(*bar_counts(image for chunk in chunks for image in chunk), len(new_ids)))
    for status, title in (("duplicate", "duplicates"), ("skipped", "skipped")):
        items = [item for item in report.items if item.status == status]
        if not items:
            continue
        lines.append(f"{title}:")
        for item in items[:_LIST_LIMIT]:
            page = f" page {item.page}" if item.page else ""
            if status == "duplicate":
                note = f"; {item.reason}" if item.reason else ""
                lines.append(f"  {item.path}{page} = {item.duplicate_of}{note}")
            else:
                lines.append(f"  {item.path}{page}: {item.reason}")
        if len(items) > _LIST_LIMIT:
            lines.append(f"  ... and {len(items) - _LIST_LIMIT} more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- commands


def _cmd_demo(args: argparse.Namespace) -> int:
    from nmid_desktop.workspace.library import fill_demo, resolve_library

    settings = load_settings()
    with open_library(resolve_library(args.library, settings, demo=True)) as store:
        report = drive(fill_demo(store, settings, per_class=args.per_class, seed=args.seed, size=args.size,
                                 only_if_empty=False))
        assert report is not None  # only_if_empty=False always imports
        print(printable("demo: " + format_import(report, store), keep_newlines=True))
        print(describe_library(store))
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    settings = load_settings()
    options = dict(
        copy=not args.reference,
        max_pixels=settings.max_pixels,
        detect_bar=settings.crop_data_bar and not args.no_bar,
        actor=_actor(),
    )
    paths = [Path(p) for p in args.paths]
    for path in paths:
        if not path.exists():
            raise NmidError(f"{path} does not exist")
    with open_store(args) as store:
        if args.csv:
            if args.label or args.layout != "auto":
                raise NmidError("--csv takes labels from the manifest; leave out --label and --layout")
            report = ImportReport()
            for path in paths:
                report.items += drive(import_csv(store, path, **options)).items
        elif len(paths) == 1 and paths[0].is_dir() and args.label is None:
            report = drive(
                import_folder(store, paths[0], layout=args.layout, recursive=not args.no_recursive, **options)
            )
        else:
            if args.layout != "auto":
                raise NmidError("--layout applies to importing one folder without --label")
            report = drive(import_files(store, paths, args.label, **options))
        print(printable(format_import(report, store), keep_newlines=True))  # file names may hold escapes
    # A file that is no image at all (a README in the folder) is reported but is not a failure.
    failed = [item for item in report.items if item.status == "skipped" and not item.reason.startswith(NOT_AN_IMAGE)]
    return batch_exit_code(failed, None)


def _cmd_stats(args: argparse.Namespace) -> int:
    with open_store(args, create=False) as store:
        print(describe_library(store))
    return 0


_SHA_PREFIX = re.compile(r"^[0-9a-fA-F]{6,64}$")


def resolve_image(store: Store, ref: str) -> int:
    """An image id from ``ref``: a number (image id) or a sha256 prefix of 6 or more hex digits."""
    ref = ref.strip()
    if ref.isdigit():
        try:
            return store.get_image(int(ref)).id
        except LibraryError:
            if not _SHA_PREFIX.match(ref):
                raise
    if not _SHA_PREFIX.match(ref):
        raise NmidError(f"{ref!r} is neither an image id nor a sha256 prefix (6+ hex digits)")
    prefix = ref.lower()
    matches = {im.id for im in store.iter_images() if im.sha256.startswith(prefix)}
    if not matches:
        raise LibraryError(f"no image with id or sha256 prefix {ref!r}")
    if len(matches) > 1:
        raise LibraryError(f"sha256 prefix {ref!r} matches {len(matches)} images; give more digits")
    return matches.pop()


def _event_line(event) -> str:  # LabelEvent
    old = event.old_label or "-"
    new = event.new_label or "-"
    review = f" [{event.old_review} -> {event.new_review}]" if event.old_review != event.new_review else ""
    who = event.source + (f" ({event.actor})" if event.actor else "")
    model = f" {event.model}" if event.model else ""
    undone = " (undone)" if event.undone else ""
    return f"#{event.id} {event.at} image {event.image_id}: {old} -> {new}{review} by {who}{model}{undone}"


def _cmd_label(args: argparse.Namespace) -> int:
    with open_store(args, create=False) as store:
        if args.label_command == "set":
            image_id = resolve_image(store, args.image)
            event = store.set_label(image_id, args.label, source="expert", actor=_actor(), review=args.review)
            print(_event_line(event))
        elif args.label_command == "clear":
            event = store.set_label(resolve_image(store, args.image), None, source="expert", actor=_actor())
            print(_event_line(event))
        elif args.label_command in ("accept", "reject"):
            state = "accepted" if args.label_command == "accept" else "rejected"
            event = store.set_review(resolve_image(store, args.image), state, actor=_actor())
            print(_event_line(event))
        elif args.label_command in ("undo", "redo"):
            event = store.undo() if args.label_command == "undo" else store.redo()
            if event is None:
                print(f"nothing to {args.label_command}")
            else:
                print(f"{args.label_command}: {_event_line(event)}")
        elif args.label_command == "history":
            image_id = resolve_image(store, args.image) if args.image else None
            events = store.history(image_id, limit=args.limit)
            if not events:
                print("no label changes yet")
            for event in events:
                print(_event_line(event))
    return 0


def _cmd_classes(args: argparse.Namespace) -> int:
    command = getattr(args, "classes_command", None) or "list"
    if getattr(args, "library", None) is None:
        args.library = args.classes_library
    with open_store(args, create=command != "list") as store:
        if command == "add":
            record = store.add_class(args.name, args.description or "", args.color or "")
            print(f"class {record.name!r} ({record.count} images)")
        elif command == "rename":
            record = store.rename_class(args.old, args.new)
            print(f"renamed {args.old!r} to {record.name!r} ({record.count} images)")
        elif command == "merge":
            n = store.merge_classes(args.source, args.target, actor=_actor())
            print(f"merged {args.source!r} into {args.target!r}: {n} images relabelled (undo with `nmid label undo`)")
        elif command == "key":
            changed = store.set_class_key(args.name, _parse_key(args.digit))
            if not changed:
                print(f"class {args.name!r} already has key {args.digit}")
            for record in changed:
                print(f"class {record.name!r}: key {record.key or '-'}")
        elif command == "describe":
            if args.description is None and args.color is None:
                raise NmidError("give --description and/or --color")
            record = store.update_class(args.name, description=args.description, color=args.color)
            print(f"class {record.name!r}: {record.description or '-'} {record.color}")
        else:
            classes = store.classes()
            if not classes:
                print("no classes yet")
            width = max((len(c.name) for c in classes), default=0)
            for c in classes:
                extra = "  ".join(x for x in (c.color, c.description) if x)
                print(f"{c.key or '-'}  {c.name:<{width}}  {c.count:>6}  {extra}".rstrip())
    return 0


def _parse_key(text: str) -> int | None:
    """A class key from the command line: a digit 1-9, or ``none`` for no key."""
    text = text.strip().lower()
    if text in ("none", "-", ""):
        return None
    if len(text) == 1 and text in "123456789":
        return int(text)
    raise NmidError(f"a class key is a digit 1-9 or 'none', not {text!r}")


def _parse_split(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"split must be three numbers like 0.7,0.15,0.15, not {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"split must be three numbers like 0.7,0.15,0.15, not {text!r}")
    return values  # type: ignore[return-value]


def _cmd_export(args: argparse.Namespace) -> int:
    from nmid_desktop.core.export import export_dataset

    with open_store(args, create=False) as store:
        report = drive(
            export_dataset(
                store, Path(args.out), split=args.split, seed=args.seed, include_pending=args.include_pending,
                copy_mode=args.copy_mode, pixels=args.pixels,
            )
        )
        print(printable(report.summary(), keep_newlines=True))
        if report.copied_instead:
            print(f"{report.copied_instead} links could not be made and were copied")
        if report.mismatched:
            print(f"{len(report.mismatched)} images changed since import were left out (listed above)")
    return batch_exit_code(report.skipped, None)


# ----------------------------------------------------------------------------- parsers


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the library commands to ``nmid``."""
    p = subparsers.add_parser(
        "demo",
        help="build the built-in demo library and show what is in it",
        description="Draw the synthetic demo micrographs (offline, deterministic) and import them "
        "into a library (default: the 'demo' folder in the user data folder).",
    )
    add_library_arg(p)
    p.add_argument("--per-class", type=int, default=60, metavar="N", help="images per class (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=256, metavar="PX", help="image side in pixels (default 256)")
    p.set_defaults(func=_cmd_demo)

    p = subparsers.add_parser(
        "import",
        help="import images: a folder (ImageFolder or flat), files, or a CSV manifest",
        description="Import images into the library. A folder whose sub-folders hold the images is read "
        "as ImageFolder (sub-folder = class); a folder of images is imported unlabelled. Every file is "
        "reported: imported, duplicate (of which), or skipped (why), and how many data bars were found "
        "and cropped.",
        epilog=f"{EXIT_CODES[0].upper()}{EXIT_CODES[1:]}. Here: 1 when any image was skipped (it could not be "
        "imported; the rest is kept); duplicates and files that are no image at all (a README) are not failures.",
    )
    add_library_arg(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="folder, image files, or CSV manifest(s) with --csv")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="folder layout (default: auto)")
    p.add_argument("--csv", action="store_true", help="PATH is a CSV manifest of path,label rows")
    p.add_argument("--reference", action="store_true", help="reference files where they are instead of copying")
    p.add_argument("--label", metavar="L", help="give every imported file this label")
    p.add_argument("--no-recursive", action="store_true", help="flat folders: leave sub-folders out")
    p.add_argument("--no-bar", action="store_true", help="do not detect SEM data bars")
    p.set_defaults(func=_cmd_import)

    p = subparsers.add_parser(
        "stats", help="show what is in the library",
        description="Show the library's contents: images, classes, labels, reviews, data bars found and cropped, "
        "splits, spending, size on disk.",
    )
    add_library_arg(p)
    p.set_defaults(func=_cmd_stats)

    p = subparsers.add_parser(
        "label",
        help="set, accept, reject, undo and redo labels; show history",
        description="Change labels by hand (recorded as expert decisions) and walk the history.",
    )
    label_sub = p.add_subparsers(dest="label_command", metavar="ACTION", required=True)
    q = label_sub.add_parser("set", help="set an image's label", description="Set an image's label (source: expert).")
    q.add_argument("image", metavar="IMAGE", help="image id or sha256 prefix")
    q.add_argument("label", metavar="LABEL")
    q.add_argument("--review", choices=REVIEW_STATES, default=None, help="review state (default: accepted)")
    add_library_arg(q)
    for name, text in (
        ("clear", "remove an image's label"),
        ("accept", "accept an image's current label"),
        ("reject", "reject an image (left out of exports and training)"),
    ):
        q = label_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        q.add_argument("image", metavar="IMAGE", help="image id or sha256 prefix")
        add_library_arg(q)
    for name, text in (("undo", "undo the latest label change"), ("redo", "redo the latest undone change")):
        q = label_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + " (no limit).")
        add_library_arg(q)
    q = label_sub.add_parser("history", help="show label changes, newest first", description="Show label history.")
    q.add_argument("image", nargs="?", metavar="IMAGE", help="only this image (id or sha256 prefix)")
    q.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    add_library_arg(q)
    p.set_defaults(func=_cmd_label)

    p = subparsers.add_parser(
        "classes",
        help="list, add, rename, merge, key and describe classes",
        description="The library's taxonomy. Without an action: list classes with number keys and image counts.",
    )
    # Not add_library_arg: a sub-parser's default would overwrite a --library given here.
    p.add_argument("--library", dest="classes_library", default=None, metavar="PATH|URL",
                   help="library folder or postgresql:// URL (also accepted after the action)")
    classes_sub = p.add_subparsers(dest="classes_command", metavar="ACTION")
    q = classes_sub.add_parser(
        "list", help="list classes with keys and counts", description="List classes: number key, name, image count."
    )
    add_library_arg(q)
    q = classes_sub.add_parser("add", help="add a class", description="Add a class.")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--description", default=None)
    q.add_argument("--color", default=None, metavar="#RRGGBB")
    add_library_arg(q)
    q = classes_sub.add_parser("rename", help="rename a class", description="Rename a class; its images follow.")
    q.add_argument("old", metavar="OLD")
    q.add_argument("new", metavar="NEW")
    add_library_arg(q)
    q = classes_sub.add_parser(
        "merge", help="merge one class into another", description="Relabel every image of SOURCE as TARGET "
        "(recorded in history, one undo step) and remove SOURCE."
    )
    q.add_argument("source", metavar="SOURCE")
    q.add_argument("target", metavar="TARGET")
    add_library_arg(q)
    q = classes_sub.add_parser(
        "key", help="give a class a number key (1-9)",
        description="Give class NAME the number key DIGIT (1-9) that labels with it in the window; the class "
        "holding DIGIT takes NAME's old key. 'none' removes NAME's key. Keys belong to the library: every user "
        "of a shared library gets the same."
    )
    q.add_argument("name", metavar="NAME")
    q.add_argument("digit", metavar="DIGIT")
    add_library_arg(q)
    q = classes_sub.add_parser("describe", help="set a class's description or colour", description="Describe a class.")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--description", default=None)
    q.add_argument("--color", default=None, metavar="#RRGGBB")
    add_library_arg(q)
    p.set_defaults(func=_cmd_classes)

    p = subparsers.add_parser(
        "export",
        help="export the curated dataset (ImageFolder, CSV, JSONL, split)",
        description="Export accepted labelled images as train/val/test ImageFolder trees with CSV and JSONL "
        "manifests. The split is stored: images keep it in later exports, and a test set is never changed.",
        epilog=f"{EXIT_CODES[0].upper()}{EXIT_CODES[1:]}. Here: 1 when any image was left out (its file is "
        "missing, unreadable, or changed since import); the export of the rest is complete.",
    )
    add_library_arg(p)
    p.add_argument("out", metavar="OUT", help="a new (or empty) folder")
    p.add_argument("--split", type=_parse_split, default=(0.7, 0.15, 0.15), metavar="TRAIN,VAL,TEST",
                   help="fractions for images without a stored split (default 0.7,0.15,0.15)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--include-pending", action="store_true", help="also export labels nobody has reviewed")
    p.add_argument("--copy-mode", choices=("copy", "hardlink", "symlink"), default="copy",
                   help="how files are written (default: copy)")
    p.add_argument("--pixels", choices=("raw", "view8"), default="raw",
                   help="raw: the files as imported (default); view8: the 8-bit model view as PNG "
                   "(data bar cropped), which torchvision loads as the encoder saw it")
    p.set_defaults(func=_cmd_export)


__all__ = ["bar_counts", "bar_text", "describe_library", "folder_size", "format_import", "register", "resolve_image"]
