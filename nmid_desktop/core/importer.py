"""Import images into a library: a folder (ImageFolder or flat), a CSV manifest, or dropped files.

Every import is a job (a generator yielding :class:`~nmid_desktop.core.jobs.Progress`
per file) that returns an :class:`ImportReport` saying, for every file and page,
whether it was imported, a duplicate (of which file or library image), or skipped
(and why). One bad file never stops an import.

Per file: a streamed sha256, the header (``probe_image``), a full decode of every
new page (so a truncated file is caught now, not at classification time), the
data bar crop box, then ``add_image`` and ``set_label(source="import")``.
Hashing and decoding run in a small thread pool (hashlib and Pillow release the
GIL); all SQLite writes stay on the job's thread. Writes are committed in batches
(every ``batch_size`` files or ``_COMMIT_EVERY_S`` seconds), so a killed process
loses at most the uncommitted batch and never a committed label; cancelling
commits the files already done and stops.
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nmid_desktop.core.databar import find_micrograph_box
from nmid_desktop.core.errors import ImageError, LabelError, LibraryError, NmidError
from nmid_desktop.core.fileio import regular_file_problem, sha256_file
from nmid_desktop.core.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    decode_estimate_bytes,
    decode_for_import,
    probe_image,
)
from nmid_desktop.core.jobs import Job, Progress
from nmid_desktop.core.labels import validate_label
from nmid_desktop.core.store.base import Store

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "imagefolder", "flat")
IMPORTED, DUPLICATE, SKIPPED, RELABELLED = "imported", "duplicate", "skipped", "relabelled"
# The reason given for a file that is not an image at all (a README beside the images): reported,
# but not a failed import.
NOT_AN_IMAGE = "not a supported image type"

_HASH_CHUNK = 1 << 20
# Decoding memory all worker threads of one import may hold at once (see MemoryBudget):
# with the interpreter, NumPy and Pillow, one import stays under 2 GB of resident memory.
DECODE_MEMORY_BYTES = 1_000_000_000
# Below this many pixels a side an image is still imported (it is valid), but the report
# says the encoder sees almost nothing of it.
MIN_EMBED_SIDE = 8
_COMMIT_EVERY_S = 1.0  # keeps the write lock short, so a label set in the window never waits long
_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
_HEADER_NAMES = {"path", "file", "filename", "file_name", "filepath", "file_path", "image", "image_path"}
_LABEL_NAMES = {"label", "class", "class_name", "category", "target", "labels"}


@dataclass
class ImportItem:
    """What happened to one file (one page of a multi-page file).

    Attributes:
        path: The file.
        status: ``imported``; ``duplicate`` (same bytes as ``duplicate_of``, nothing
            added); ``skipped`` (``reason`` says why); or ``relabelled`` (a duplicate of
            an unlabelled library image, which received this file's label).
        image_id: The library image (new or existing), None when skipped.
        label: The label the import gave or asked for.
        reason: Why a file was skipped, or a note (a label conflict).
        duplicate_of: The earlier file of this import, or ``library image N (name)``.
        page: Page index for multi-page TIFF.
    """

    path: Path
    status: str
    image_id: int | None = None
    label: str | None = None
    reason: str = ""
    duplicate_of: str | None = None
    page: int = 0


@dataclass
class ImportReport:
    """Per-file outcome of an import, with counts."""

    items: list[ImportItem] = field(default_factory=list)
    cancelled: bool = False

    def count(self, status: str) -> int:
        """How many items have this status."""
        return sum(1 for item in self.items if item.status == status)

    @property
    def imported(self) -> int:
        """Images added to the library."""
        return self.count(IMPORTED)

    @property
    def duplicates(self) -> int:
        """Items whose bytes were already in the library or earlier in this import."""
        return self.count(DUPLICATE)

    @property
    def skipped(self) -> int:
        """Files that could not be imported."""
        return self.count(SKIPPED)

    @property
    def relabelled(self) -> int:
        """Duplicates that gave an unlabelled library image its label."""
        return self.count(RELABELLED)

    def summary(self) -> str:
        """One line: counts of each outcome."""
        parts = [f"{self.imported} imported", f"{self.duplicates} duplicates", f"{self.skipped} skipped"]
        if self.relabelled:
            parts.append(f"{self.relabelled} relabelled")
        return ", ".join(parts) + (" (cancelled)" if self.cancelled else "")


@dataclass(frozen=True)
class _Entry:
    """A file to import with the label its location gives, or why it cannot be imported."""

    path: str
    label: str | None = None
    error: str = ""


@dataclass
class _Page:
    page: int
    width: int = 0
    height: int = 0
    crop_box: tuple[int, int, int, int] | None = None
    known: bool = False  # already in the library (committed): not decoded
    error: str = ""
    dtype: str = ""  # this page's own sample type: pages of one TIFF may differ


@dataclass
class _Prepared:
    """What the worker threads found out about one file."""

    sha256: str = ""
    n_pages: int = 1
    dtype: str = ""
    pixel_size_m: float | None = None
    pages: list[_Page] = field(default_factory=list)
    error: str = ""
    damage: str = ""  # the file holds fewer pages than it claims


# ---------------------------------------------------------------------------- listing


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in _IGNORED_NAMES


class _Walk:
    """State of one folder walk: folders already entered (by device and inode), so links cannot loop."""

    def __init__(self, skip: Path | None) -> None:
        self.skip = skip
        self.visited: dict[tuple[int, int], str] = {}

    def enter(self, folder: Path) -> str:
        """Mark ``folder`` as entered; returns why it must not be entered ("" when fine)."""
        try:
            st = os.stat(folder)
        except OSError as exc:
            return _os_reason(exc, "folder")
        key = (st.st_dev, st.st_ino)
        if key in self.visited:
            return f"folder already imported as {self.visited[key]} (a symbolic link loop or a second link)"
        self.visited[key] = str(folder)
        return ""


def _os_reason(exc: OSError, what: str = "file") -> str:
    if exc.errno == errno.ELOOP:
        return "is a symbolic link loop"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot read this {what}: permission denied"
    if isinstance(exc, FileNotFoundError):
        return f"{what} not found (a broken symbolic link?)"
    return f"cannot read this {what} ({exc.strerror or exc})"


def _scan(folder: Path, walk: _Walk) -> tuple[list[os.DirEntry], list[os.DirEntry], list[_Entry]]:
    """Sorted (files, dirs, problems) of one folder; hidden entries and the library itself left out.

    Nothing is dropped without a word: a FIFO, a device, a broken link or a link loop
    becomes a problem entry (reported as skipped); symlinked folders are followed,
    once, so a loop is reported instead of walked forever; an unreadable folder is
    one problem entry and the rest of the import goes on.
    """
    files: list[os.DirEntry] = []
    dirs: list[os.DirEntry] = []
    problems: list[_Entry] = []
    try:
        it = os.scandir(folder)
    except OSError as exc:
        return files, dirs, [_Entry(str(folder), None, _os_reason(exc, "folder"))]
    with it:
        while True:
            try:
                entry = next(it)
            except StopIteration:
                break
            except OSError as exc:  # the listing itself failed half-way
                problems.append(_Entry(str(folder), None, _os_reason(exc, "folder")))
                break
            if _is_ignored(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    if walk.skip is None or _resolved(Path(entry.path)) != walk.skip:
                        dirs.append(entry)
                    continue
                if entry.is_file(follow_symlinks=True):
                    files.append(entry)
                    continue
            except OSError:
                pass  # a loop or an unreadable target: reported below with the reason
            problem = regular_file_problem(entry.path) or "not a regular file"
            problems.append(_Entry(entry.path, None, problem))
    files.sort(key=lambda e: e.name)
    dirs.sort(key=lambda e: e.name)
    return files, dirs, problems


def _file_entry(path: str, label: str | None, label_error: str = "") -> _Entry:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUPPORTED_SUFFIXES:
        return _Entry(path, label, f"{NOT_AN_IMAGE} ({suffix or 'no suffix'})")
    problem = regular_file_problem(path)
    if problem is not None:
        return _Entry(path, label, problem)
    return _Entry(path, label, label_error)


def _walk(folder: Path, label: str | None, label_error: str, recursive: bool, walk: _Walk) -> Iterator[_Entry]:
    """Every file under ``folder`` in sorted order, depth first, one folder listed at a time."""
    reason = walk.enter(folder)
    if reason:
        yield _Entry(str(folder), label, reason)
        return
    files, dirs, problems = _scan(folder, walk)
    for problem in problems:
        yield _Entry(problem.path, label, problem.error)
    for entry in files:
        yield _file_entry(entry.path, label, label_error)
    del files
    if recursive:
        for entry in dirs:
            yield from _walk(Path(entry.path), label, label_error, recursive, walk)


def _checked_label(name: str) -> tuple[str | None, str]:
    try:
        return validate_label(name), ""
    except LabelError as exc:
        return None, f"invalid label: {exc}"


def _folder_entries(folder: Path, layout: str, recursive: bool, skip: Path | None) -> list[_Entry]:
    if layout not in LAYOUTS:
        raise NmidError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise NmidError(f"{folder} is not a folder")
    walk = _Walk(skip)
    walk.enter(folder)
    files, dirs, problems = _scan(folder, walk)
    if problems and not files and not dirs and problems[0].path == str(folder):
        raise NmidError(f"{folder}: {problems[0].error}")
    if layout == "auto":
        has_images = any(os.path.splitext(e.name)[1].lower() in SUPPORTED_SUFFIXES for e in files)
        layout = "imagefolder" if dirs and not has_images else "flat"
    entries = list(problems) + [_file_entry(e.path, None) for e in files]
    for d in dirs:
        if layout == "imagefolder":
            # ImageFolder: the top-level folder names the class, at any depth below it
            # (a symlinked class folder is followed like any other).
            label, error = _checked_label(d.name)
            entries.extend(_walk(Path(d.path), label, error, True, walk))
        elif recursive:
            entries.extend(_walk(Path(d.path), None, "", True, walk))
    return entries


def _csv_entries(manifest: Path) -> list[_Entry]:
    manifest = Path(manifest)
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise NmidError(f"cannot read the manifest {manifest}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise NmidError(f"{manifest} is not a UTF-8 text file") from None
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    base = manifest.parent
    entries: list[_Entry] = []
    path_col, label_col = 0, 1
    for n, row in enumerate(csv.reader(io.StringIO(text), dialect)):
        cells = [c.strip() for c in row]
        if n == 0:
            names = [c.lower() for c in cells]
            if any(name in _HEADER_NAMES for name in names):
                # A header names the columns, in any order (an export's manifest puts label first).
                path_col = next(i for i, name in enumerate(names) if name in _HEADER_NAMES)
                label_col = next((i for i, name in enumerate(names) if name in _LABEL_NAMES), -1)
                continue
            if any(name in _LABEL_NAMES for name in names):
                raise NmidError(
                    f"{manifest}: the header names a label column but no path column "
                    f"(one of {', '.join(sorted(_HEADER_NAMES))})"
                )
        if len(cells) <= path_col or not cells[path_col]:
            continue
        path = Path(cells[path_col]).expanduser()
        if not path.is_absolute():
            path = base / path
        raw_label = cells[label_col] if 0 <= label_col < len(cells) else ""
        label, error = _checked_label(raw_label) if raw_label else (None, "")
        entries.append(_file_entry(str(path), label, error))
    return entries


# ---------------------------------------------------------------------------- per-file work


def _sha256(path: str) -> str:
    return sha256_file(path, _HASH_CHUNK)


class MemoryBudget:
    """Bytes of decoding that may run at once across the import's worker threads.

    Each file reserves what its header says decoding may take
    (:func:`~nmid_desktop.core.images.decode_estimate_bytes`) before it decodes; a
    file larger than the whole budget waits until it runs alone. So four threads on
    four 400 MP files decode one at a time, while small files still run in parallel.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit = max(1, int(limit_bytes))
        self._used = 0
        self._cond = threading.Condition()

    def reserve(self, n_bytes: int) -> int:
        """Block until ``n_bytes`` (capped at the limit) fit; returns what was reserved."""
        n = max(0, min(int(n_bytes), self.limit))
        with self._cond:
            while self._used + n > self.limit and self._used > 0:
                self._cond.wait()
            self._used += n
        return n

    def release(self, n_bytes: int) -> None:
        """Give back what :meth:`reserve` returned."""
        with self._cond:
            self._used = max(0, self._used - n_bytes)
            self._cond.notify_all()


def _prepare(path: str, store: Store, max_pixels: int, detect_bar: bool, budget: MemoryBudget | None = None) -> _Prepared:
    """Hash, probe and decode one file (runs in a worker thread; never raises).

    Pages already in the library are not decoded again. The lookup runs on the
    worker's own connection, so it does not see the job's uncommitted batch; copies
    within one import are caught by the committer instead. Decoding waits for room
    in the shared memory ``budget`` and keeps no raw copy of the pixels.
    """
    result = _Prepared()
    try:
        result.sha256 = _sha256(path)
        info = probe_image(Path(path), max_pixels=max_pixels)
        result.n_pages, result.dtype, result.pixel_size_m = info.n_pages, info.dtype, info.pixel_size_m
        result.damage = info.damage
        for page in range(info.n_pages):
            if store.find_image(result.sha256, page) is not None:
                result.pages.append(_Page(page, known=True))
                continue
            reserved = budget.reserve(decode_estimate_bytes(info)) if budget is not None else 0
            try:
                decoded = decode_for_import(Path(path), page, max_pixels=max_pixels)
                box = find_micrograph_box(decoded.view8) if detect_bar else None
                result.pages.append(_Page(page, decoded.width, decoded.height, box, dtype=decoded.dtype))
                del decoded  # the view goes before the next page (or file) is decoded
            except ImageError as exc:
                result.pages.append(_Page(page, error=exc.reason))
            finally:
                if budget is not None:
                    budget.release(reserved)
    except FileNotFoundError:
        result.error = "file not found"
    except ImageError as exc:
        result.error = exc.reason
    except OSError as exc:
        result.error = f"cannot read file ({exc.strerror or exc})"
    except NmidError as exc:  # e.g. the library was closed under us
        result.error = str(exc)
    except MemoryError:
        result.error = "not enough memory to decode this image"
    except Exception as exc:  # a decoder bug must not stop a 10,000-file import
        # The report carries the reason; the traceback is for `nmid -v`.
        log.debug("unexpected error importing %s", path, exc_info=True)
        result.error = f"unexpected error: {type(exc).__name__}: {exc}"
    return result


def _in_order(
    pool: ThreadPoolExecutor, entries: Iterable[_Entry], work: Callable[[str], _Prepared], window: int
) -> Generator[tuple[_Entry, _Prepared | None], None, None]:
    """Results in input order, with at most ``window`` files in flight (bounded memory)."""
    pending: deque[tuple[_Entry, Future[_Prepared] | None]] = deque()
    it = iter(entries)

    def submit(entry: _Entry) -> None:
        pending.append((entry, None if entry.error else pool.submit(work, entry.path)))

    for entry in it:
        submit(entry)
        if len(pending) >= window:
            break
    while pending:
        entry, future = pending.popleft()
        following = next(it, None)
        if following is not None:
            submit(following)
        yield entry, None if future is None else future.result()


class _Committer:
    """Adds prepared files to the store and decides each item's status (job thread only)."""

    def __init__(self, store: Store, *, copy: bool, actor: str) -> None:
        self.store = store
        self.copy = copy
        self.actor = actor
        # (sha256, page) -> (what a later copy duplicates, image id, label)
        self.seen: dict[tuple[str, int], tuple[str, int, str | None]] = {}

    def add(self, entry: _Entry, prep: _Prepared | None) -> list[ImportItem]:
        path = Path(entry.path)
        if entry.error or prep is None:
            return [ImportItem(path, SKIPPED, label=entry.label, reason=entry.error)]
        if prep.error:
            return [ImportItem(path, SKIPPED, label=entry.label, reason=prep.error)]
        items = []
        for page in prep.pages:
            try:
                # A savepoint per page: a failure leaves nothing half-added.
                with self.store.transaction():
                    items.append(self._add_page(path, entry.label, prep, page))
            except (LibraryError, LabelError) as exc:
                items.append(ImportItem(path, SKIPPED, label=entry.label, reason=str(exc), page=page.page))
        if prep.damage:
            # The pages read are kept; the missing rest is reported, not silently dropped.
            items.append(ImportItem(path, SKIPPED, label=entry.label, reason=prep.damage, page=prep.n_pages))
        return items

    def _add_page(self, path: Path, label: str | None, prep: _Prepared, page: _Page) -> ImportItem:
        key = (prep.sha256, page.page)
        if key in self.seen:
            first, image_id, first_label = self.seen[key]
            note = ""
            if label is not None and first_label is not None and label != first_label:
                note = f"same bytes labelled {first_label!r} there; label {label!r} ignored"
            return ImportItem(path, DUPLICATE, image_id, label, note, first, page.page)
        if page.error:
            return ImportItem(path, SKIPPED, label=label, reason=page.error, page=page.page)
        existing = self.store.find_image(prep.sha256, page.page) if page.known else None
        if existing is None and not page.known:
            image_id, created = self.store.add_image(
                path,
                sha256=prep.sha256,
                page=page.page,
                n_pages=prep.n_pages,
                width=page.width,
                height=page.height,
                dtype=page.dtype or prep.dtype,
                pixel_size_m=prep.pixel_size_m,
                crop_box=page.crop_box,
                copy=self.copy,
            )
            if created:
                if label is not None:
                    self.store.set_label(image_id, label, source="import", actor=self.actor)
                self.seen[key] = (str(path), image_id, label)
                note = ""
                if min(page.width, page.height) < MIN_EMBED_SIDE:
                    note = (
                        f"imported, but only {page.width} x {page.height} pixels: too small for the encoder "
                        f"to see texture (under {MIN_EMBED_SIDE} pixels a side), so its neighbours mean little"
                    )
                return ImportItem(path, IMPORTED, image_id, label, note, page=page.page)
            existing = self.store.get_image(image_id)  # added meanwhile by another process
        if existing is None:  # known at start but gone now: cannot happen without deletes
            raise LibraryError(f"{path}: image vanished from the library during import")
        where = f"library image {existing.id} ({existing.original_name})"
        # Later copies in this import are reported against the library image too.
        self.seen[key] = (where, existing.id, existing.label if existing.label is not None else label)
        if label is not None and existing.label is None:
            self.store.set_label(existing.id, label, source="import", actor=self.actor)
            return ImportItem(path, RELABELLED, existing.id, label, "was unlabelled", where, page.page)
        note = ""
        if label is not None and existing.label != label:
            note = f"library label {existing.label!r} kept; this file says {label!r}"
        return ImportItem(path, DUPLICATE, existing.id, label, note, where, page.page)


def _run(
    store: Store,
    entries: list[_Entry],
    *,
    copy: bool,
    max_pixels: int,
    detect_bar: bool,
    actor: str,
    batch_size: int,
    workers: int | None,
    memory_bytes: int = 0,
) -> Job[ImportReport]:
    report = ImportReport()
    memory_bytes = memory_bytes or DECODE_MEMORY_BYTES
    total = len(entries)
    if total == 0:
        return report
    cleaner = getattr(store, "clean_temporary_files", None)
    if callable(cleaner):
        cleaner()  # copies a killed import left behind
    committer = _Committer(store, copy=copy, actor=actor)
    n_workers = workers or max(1, min(4, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="nmid-import")
    budget = MemoryBudget(memory_bytes)
    results = _in_order(pool, entries, lambda p: _prepare(p, store, max_pixels, detect_bar, budget), n_workers * 4)
    done = 0
    try:
        exhausted = False
        while not exhausted and not report.cancelled:
            # One transaction per batch; the per-file yields inside are the cancel points.
            with store.transaction():
                started = time.monotonic()
                for _ in range(batch_size):
                    nxt = next(results, None)
                    if nxt is None:
                        exhausted = True
                        break
                    items = committer.add(*nxt)
                    report.items.extend(items)
                    done += 1
                    try:
                        yield Progress(done, total, os.path.basename(nxt[0].path), items)
                    except GeneratorExit:
                        # Cancelled: leave the with-block normally so the files done are committed.
                        report.cancelled = True
                        break
                    if time.monotonic() - started > _COMMIT_EVERY_S:
                        break
    finally:
        results.close()
        pool.shutdown(wait=True, cancel_futures=True)
    return report


def import_folder(
    store: Store,
    folder: Path,
    *,
    layout: str = "auto",
    copy: bool = True,
    recursive: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    detect_bar: bool = True,
    actor: str = "",
    batch_size: int = 200,
    workers: int | None = None,
) -> Job[ImportReport]:
    """Import a folder: ``imagefolder`` (one sub-folder per class), ``flat`` (unlabelled) or ``auto``.

    ``auto`` takes ImageFolder layout when the folder holds sub-folders and no image
    files of its own, flat otherwise. Hidden files and the library's own folder are
    left out; other files that are not images are reported as skipped.

    Args:
        store: The library.
        folder: The folder to import.
        layout: ``auto``, ``imagefolder`` or ``flat``.
        copy: Copy files into the library (default) or reference them where they are.
        recursive: For flat layout, also import sub-folders (ImageFolder is always recursive
            below each class folder).
        max_pixels: Decompression-bomb limit per image.
        detect_bar: Detect the SEM data bar and store the crop box.
        actor: Who imports (recorded in label history).
        batch_size: Files per committed transaction.
        workers: Threads for hashing and decoding (default: up to 4).

    Yields:
        Progress per file; ``data`` is the list of :class:`ImportItem` for that file.

    Returns:
        The report of every file.

    Raises:
        NmidError: If the folder does not exist or the layout is unknown.
    """
    entries = _folder_entries(Path(folder), layout, recursive, _resolved(store.root))
    return (
        yield from _run(
            store, entries, copy=copy, max_pixels=max_pixels, detect_bar=detect_bar, actor=actor,
            batch_size=batch_size, workers=workers,
        )
    )


def import_csv(
    store: Store,
    manifest: Path,
    *,
    copy: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    detect_bar: bool = True,
    actor: str = "",
    batch_size: int = 200,
    workers: int | None = None,
) -> Job[ImportReport]:
    """Import the files a CSV manifest lists as ``path,label`` rows.

    Relative paths are resolved against the manifest's folder; a header row
    (``path,label``) is allowed; an empty label imports the file unlabelled; the
    delimiter may be ``,``, ``;`` or tab. Arguments are as in :func:`import_folder`.

    Raises:
        NmidError: If the manifest cannot be read.
    """
    entries = _csv_entries(Path(manifest))
    return (
        yield from _run(
            store, entries, copy=copy, max_pixels=max_pixels, detect_bar=detect_bar, actor=actor,
            batch_size=batch_size, workers=workers,
        )
    )


def import_files(
    store: Store,
    paths: list[Path],
    label: str | None = None,
    *,
    copy: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    detect_bar: bool = True,
    actor: str = "",
    batch_size: int = 200,
    workers: int | None = None,
) -> Job[ImportReport]:
    """Import dropped files (and folders, flat and recursive), all with ``label`` if given.

    Arguments are as in :func:`import_folder`.

    Raises:
        LabelError: If ``label`` is not a valid class name.
    """
    if label is not None:
        label = validate_label(label)
    walk = _Walk(_resolved(store.root))
    entries: list[_Entry] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            entries.extend(_walk(path, label, "", True, walk))
        else:
            entries.append(_file_entry(str(path), label))
    return (
        yield from _run(
            store, entries, copy=copy, max_pixels=max_pixels, detect_bar=detect_bar, actor=actor,
            batch_size=batch_size, workers=workers,
        )
    )


def _resolved(path: Path) -> Path | None:
    try:
        return Path(path).resolve()
    except OSError:
        return None
