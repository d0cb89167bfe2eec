"""Multimodal-model commands: ``nmid models``, ``describe``, ``synthesize``, ``questions``, ``api-key``.

Every paid command has ``--dry-run``, which prints the cost estimate and sends
nothing, and ``--refresh``, which asks again instead of serving cached answers.
Without an endpoint (no base URL and no key) the paid commands say so
in one line; the rest of nmid keeps working offline.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from nmid_desktop.commands._common import (
    EXIT_CODES,
    add_library_arg,
    add_refresh_arg,
    batch_exit_code,
    library_path,
    open_store,
    refresh_client,
)
from nmid_desktop.core.config import Settings, load_settings
from nmid_desktop.core.errors import NmidError
from nmid_desktop.lmm.usage import record_paid_call


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the model commands to ``nmid``."""
    p = subparsers.add_parser(
        "models",
        help="list the endpoint's models and check the configured ones",
        description="List the models of the configured endpoint (GET /v1/models) with any shutdown date, "
        "and check lmm.vision_model, lmm.text_model and lmm.image_model against them.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser(
        "describe",
        help="describe images group by group with the vision model",
        description="Structured description (visual question answering): the vision model answers a question set "
        "group by group; answers are stored per image with model and prompt version.",
        epilog=_exit_epilog("1 when any image got no description"),
    )
    p.add_argument("images", nargs="+", metavar="IMG", help="library image ids or image files")
    p.add_argument("--questions", metavar="SET", default=None,
                   help="question set: name, name-vN or a JSON file (default: the library's, else sem-nanomaterials)")
    p.add_argument("--dry-run", action="store_true", help="print the cost estimate and send nothing")
    p.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    add_refresh_arg(p)
    add_library_arg(p)
    p.set_defaults(func=cmd_describe)

    p = subparsers.add_parser(
        "synthesize",
        help="make synthetic images from an image's description",
        description="The image model draws N images from the image's latest description; they join the library "
        "as synthetic, linked to the source, with its label, pending review.",
        epilog=_exit_epilog("1 when any generated image was refused (not an image, too large, not the size asked)"),
    )
    p.add_argument("image", type=int, metavar="IMG", help="library image id (described and labelled)")
    p.add_argument("--n", type=int, default=4, help="number of images (default 4)")
    p.add_argument("--size", default="1024x1024", help="image size WIDTHxHEIGHT (default 1024x1024)")
    p.add_argument("--quality", default=None, help="quality for GPT Image models: low, medium or high")
    p.add_argument("--dry-run", action="store_true", help="print the cost estimate and send nothing")
    add_refresh_arg(p)
    add_library_arg(p)
    p.set_defaults(func=cmd_synthesize)

    p = subparsers.add_parser(
        "questions",
        help="list question sets, or have the text model write one for a domain",
        description="Without --domain: list the question sets. With --domain: the text model writes a question set "
        "for that domain from the library's class names; it is saved as an editable JSON file in the library's "
        "prompts/ folder and becomes the library's question set.",
    )
    p.add_argument("--domain", default=None, help='what the images are, e.g. "optical images of steel surface defects"')
    p.add_argument("--classes", default=None, help="comma-separated class names (default: the library's classes)")
    p.add_argument("--name", default=None, help="name of the new set (default: from the domain)")
    p.add_argument("--groups", type=int, default=10, help="number of groups to ask for (default 10)")
    p.add_argument("--show", metavar="SET", default=None, help="print one question set")
    p.add_argument("--use", metavar="SET", default=None, help="make SET the library's question set")
    p.add_argument("--dry-run", action="store_true", help="print the cost estimate and send nothing")
    add_refresh_arg(p)
    add_library_arg(p)
    p.set_defaults(func=cmd_questions)

    p = subparsers.add_parser(
        "api-key",
        help="store, remove or locate the API key (OS keyring)",
        description="The key is read from OPENAI_API_KEY, else the OS keyring, else a private file in the config "
        "folder (only where no keyring exists). It is never written to settings, libraries or logs.",
    )
    p.add_argument("action", choices=("set", "delete", "status"))
    p.set_defaults(func=cmd_api_key)


def _exit_epilog(detail: str) -> str:
    """The exit-code rule with what counts as a failed item for one command."""
    return f"{EXIT_CODES[0].upper()}{EXIT_CODES[1:]}. Here: {detail}."


def _print_estimate(estimate: Any, dry_run: bool) -> None:
    """A dry run's estimate is its result (stdout); before a real batch it is a note (stderr)."""
    if dry_run:
        print("dry run, nothing sent: " + estimate.summary())
    else:
        print("estimate: " + estimate.summary(), file=sys.stderr)


def _estimate_printer(dry_run: bool):
    """A progress callback that prints the job's estimate (the first report's ``data``) once."""
    from nmid_desktop.lmm.cost import CostEstimate

    state = {"printed": False}

    def on_progress(progress: Any) -> None:
        if not state["printed"] and isinstance(progress.data, CostEstimate):
            state["printed"] = True
            _print_estimate(progress.data, dry_run)

    return on_progress


def _run(job: Any, dry_run: bool) -> Any:
    """Drive a job with the progress line, printing its cost estimate first."""
    from nmid_desktop.commands._common import ProgressLine
    from nmid_desktop.core.jobs import run_job

    line = ProgressLine()
    show = _estimate_printer(dry_run)

    def both(progress: Any) -> None:
        show(progress)
        line(progress)

    try:
        return run_job(job, both)
    except KeyboardInterrupt:
        job.close()
        raise
    finally:
        line.close()


def cmd_models(args: argparse.Namespace) -> int:
    """``nmid models``."""
    from nmid_desktop.lmm.catalog import configured_model_problems, format_models, list_models
    from nmid_desktop.lmm.client import LmmClient

    settings = load_settings()
    with LmmClient.from_settings(settings.lmm, cache=False) as client:
        models = list_models(client)
        endpoint = client.endpoint
    if args.json:
        print(json.dumps(
            [{"id": m.id, "owned_by": m.owned_by, "shutdown_date": m.shutdown_date.isoformat() if m.shutdown_date else None}
             for m in models],
            indent=2,
        ))
    else:
        print(f"endpoint: {endpoint.base_url} (key: {endpoint.key_source})")
        print(format_models(models, settings.lmm))
    problems = configured_model_problems(models, settings.lmm)
    for problem in problems:
        print(f"nmid: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _items(values: list[str]) -> list[Any]:
    return [int(v) if v.isdigit() and not Path(v).exists() else Path(v) for v in values]


def cmd_describe(args: argparse.Namespace) -> int:
    """``nmid describe IMG...``."""
    from nmid_desktop.lmm.describe import describe_images

    settings = load_settings()
    client = refresh_client(args, settings)
    store = open_store(args)
    try:
        job = describe_images(store, _items(args.images), settings, question_set=args.questions, dry_run=args.dry_run,
                              client=client)
        batch = _run(job, args.dry_run)
    finally:
        store.close()
        if client is not None:
            client.close()
    if batch.dry_run:
        return 0
    for d in batch.descriptions:
        where = f"image {d.image_id}" if d.image_id is not None else str(d.item)
        if args.json:
            for row in d.rows:
                print(json.dumps({"image": where, "model": d.model, "prompt_version": d.prompt_version,
                                  "group": row.group, "question": row.question, "answer": row.answer}))
            continue
        print(f"== {where} ({d.model}, {d.prompt_version}{', cached' if d.cached else ''})")
        if d.error:
            print(f"   no description: {d.error}")
        group = None
        for row in d.rows:
            if row.group != group:
                group = row.group
                print(f"  [{group}]")
            print(f"    {row.question}\n      {row.answer}")
    for item, reason in batch.failures:
        print(f"nmid: {item}: {reason}", file=sys.stderr)
    if batch.stopped == "budget":
        print("nmid: stopped at the budget cap (setting lmm.budget_usd)", file=sys.stderr)
    return batch_exit_code(batch.failures, batch.stopped)


def cmd_synthesize(args: argparse.Namespace) -> int:
    """``nmid synthesize IMG --n N``."""
    from nmid_desktop.lmm.synthesize import synthesize_images

    settings = load_settings()
    store = open_store(args, create=False)
    client = None
    try:
        client = refresh_client(args, settings)
        job = synthesize_images(
            store, args.image, args.n, settings, size=args.size, quality=args.quality, dry_run=args.dry_run,
            client=client,
        )
        result = _run(job, args.dry_run)
    finally:
        store.close()
        if client is not None:
            client.close()
    if result.dry_run:
        print(f"prompt ({len(result.prompt)} characters):\n{result.prompt}")
        return 0
    ids = ", ".join(str(i) for i in result.image_ids) or "none"
    print(f"{len(result.image_ids)} synthetic images from image {args.image}, pending review: {ids}")
    if result.duplicates:
        print(f"{result.duplicates} duplicate images were not added again")
    for reason in result.rejected:
        print(f"nmid: a generated image was refused: {reason}", file=sys.stderr)
    return 1 if result.rejected else 0


def cmd_questions(args: argparse.Namespace) -> int:
    """``nmid questions``: list, show, use, or generate a question set."""
    from nmid_desktop.lmm.describe import QUESTION_SET_META
    from nmid_desktop.lmm.questions import list_question_sets, load_question_set, question_set_folders

    settings = load_settings()
    root = library_path(args, settings)
    if args.show:
        qs = load_question_set(args.show, root)
        print(f"{qs.id} ({qs.domain}; {qs.created_by}; {qs.path})")
        print(qs.numbered())
        return 0
    if args.use:
        qs = load_question_set(args.use, root)
        store = open_store(args)
        try:
            # A set in a searched folder is found again by its id; any other file by its path.
            searched = qs.path is None or qs.path.parent.resolve() in [f.resolve() for f in question_set_folders(root)]
            store.set_meta(QUESTION_SET_META, qs.id if searched else str(qs.path.resolve()))
        finally:
            store.close()
        print(f"the library now describes images with {qs.id}")
        return 0
    if not args.domain:
        current = None
        if root.exists():
            store = open_store(args, create=False)
            try:
                current = store.get_meta(QUESTION_SET_META)
            finally:
                store.close()
        for qs in list_question_sets(root):
            print(f"{qs.id:<32} {len(qs.groups):>2} groups {qs.n_questions:>3} questions  {qs.domain}  [{qs.path}]")
        print(f"library question set: {current or 'sem-nanomaterials (built-in default)'}")
        return 0
    return _generate_questions(args, settings, root)


def _generate_questions(args: argparse.Namespace, settings: Settings, root: Path) -> int:
    from nmid_desktop.lmm.client import LmmClient
    from nmid_desktop.lmm.cost import PriceTable
    from nmid_desktop.lmm.describe import QUESTION_SET_META
    from nmid_desktop.lmm.paid_batch import paid_session
    from nmid_desktop.lmm.questions import estimate_question_generation, generate_question_set, save_question_set

    store = open_store(args)
    try:
        if args.classes:
            classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        else:
            classes = [c.name for c in store.classes()]
        estimate = estimate_question_generation(args.domain, classes, settings.lmm, PriceTable.load())
        _print_estimate(estimate, args.dry_run)
        if args.dry_run:
            return 0
        with LmmClient.from_settings(settings.lmm, refresh=args.refresh) as client, \
                paid_session(settings.lmm, estimate, store.total_cost(), model_setting="lmm.text_model", client=client):
            qs, result = generate_question_set(
                client, args.domain, classes, settings.lmm, name=args.name, n_groups=args.groups
            )
        if not result.cached:
            price = PriceTable.load().chat(settings.lmm.text_model)
            record_paid_call(store, "questions", result, cost_usd=price.cost(result.tokens_in, result.tokens_out) if price else None,
                             model=settings.lmm.text_model)
        saved = save_question_set(qs, store.root / "prompts")
        store.set_meta(QUESTION_SET_META, saved.id)
    finally:
        store.close()
    print(f"saved {saved.id} ({len(saved.groups)} groups, {saved.n_questions} questions) to {saved.path}")
    print("edit the file freely; the library now uses this set for `nmid describe`")
    print(saved.numbered())
    return 0


def cmd_api_key(args: argparse.Namespace) -> int:
    """``nmid api-key set|delete|status``."""
    from nmid_desktop.lmm.secrets import delete_api_key, key_source, store_api_key

    if args.action == "status":
        source = key_source()
        print({"environment": "the key comes from OPENAI_API_KEY",
               "keyring": "the key is in the OS keyring",
               "file": "the key is in a private file in the config folder",
               "none": "no API key is configured"}[source])
        return 0
    if args.action == "delete":
        removed = delete_api_key()
        print("removed the key from " + ", ".join(removed) if removed else "no stored key to remove")
        return 0
    if sys.stdin.isatty():
        key = getpass.getpass("API key (input hidden): ")
    else:
        key = sys.stdin.readline()
    if not key.strip():
        raise NmidError("no key given")
    where = store_api_key(key)
    print("stored the key in the OS keyring" if where == "keyring" else f"stored the key in {where} (readable only by you)")
    return 0
