"""Export a curated dataset: ImageFolder tree, CSV and JSONL manifests, a fixed stratified split.

Layout of ``out_dir``::

    train/<class folder>/<file>    val/...    test/...
    manifest.csv  manifest.jsonl   one row per image with its provenance
    <split>/metadata.jsonl         that split's rows with ``file_name`` relative to it, where
                                   Hugging Face ``imagefolder`` reads metadata (it ignores
                                   manifest.*; one metadata file per folder, never also a .csv)
    classes.json                   class folder -> name, description, colour
    class_to_idx.json              class folder -> index, the same in every split

Every split holds a folder for every class, empty where the split has no image of
it, so torchvision gives each class the same index everywhere; load a split with
``torchvision.datasets.ImageFolder(root / "train", allow_empty=True)`` (without
``allow_empty`` torchvision refuses an empty class folder).

``pixels="view8"`` writes, instead of the raw files, the 8-bit grey model view
(data bar cropped) as PNG: 16-bit and float TIFFs load in torchvision as all-white
or all-black images, the model view loads as what the encoder saw.

Content is verified: every file is hashed while it is copied (or before it is
linked) and compared with the sha256 stored at import, so a referenced file
changed since then is reported and left out, never exported under its old label.
Text cells of ``manifest.csv`` that a spreadsheet would run as a formula
(``=``, ``+``, ``-``, ``@``, tab, CR) are prefixed with ``'``.

What goes in: labelled images that are not rejected; pending ones only with
``include_pending``. Synthetic images go to ``train`` only, never to a test or
validation split, so no score is ever measured on generated data.

The split is stratified per class and seeded. It is stored in the library: an
image keeps its split in every later export, and images added later are assigned
so that each class approaches the requested fractions without moving any earlier
image, so a test set, once defined, is fixed.

Safety: class folders come from :func:`~nmid_desktop.core.labels.assign_dirnames`
(distinct, valid on Windows and Linux), file names are made of the image id and a
sanitised stem, and every destination is checked to resolve inside the export.
The export is written to a hidden folder beside ``out_dir`` and renamed into place
at the end, so a cancelled or crashed export never looks complete; such a folder
left by a killed export (its writer's pid no longer runs) is removed by the next
export into the same parent folder.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import re
import shutil
import uuid
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nmid_desktop.core.errors import ImageError, LibraryError, NmidError
from nmid_desktop.core.jobs import Job, Progress
from nmid_desktop.core.labels import assign_dirnames, safe_filename
from nmid_desktop.core.store.base import SPLITS, ImageFilter, ImageRecord, Store

COPY_MODES = ("copy", "hardlink", "symlink")
PIXEL_MODES = ("raw", "view8")
_PARTIAL = ".partial-"
_OWNER_FILE = ".nmid-export-owner"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")
MANIFEST_FIELDS = (
    "id", "sha256", "page", "file", "class", "split", "label_source", "actor", "model", "prompt_version",
    "confidence", "label_at", "review", "pixel_size_m", "crop_box", "synthetic", "source_image_id",
    "original_name", "width", "height",
)


@dataclass
class ExportReport:
    """What an export wrote.

    Attributes:
        out_dir: The finished export folder.
        counts: ``{split: {class: images}}``.
        skipped: ``(image id, reason)`` for images that could not be written.
        newly_assigned: Images that got a split for the first time in this export.
        copied_instead: Links that could not be made and were copied instead.
        mismatched: Images whose file no longer has the sha256 stored at import (left out).
        cleaned: Folders of killed exports removed before this one started.
    """

    out_dir: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    newly_assigned: int = 0
    copied_instead: int = 0
    mismatched: list[int] = field(default_factory=list)
    cleaned: int = 0

    @property
    def n_images(self) -> int:
        """Images written."""
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    def summary(self) -> str:
        """One line per split, then skipped images."""
        lines = [f"exported {self.n_images} images to {self.out_dir}"]
        for split in SPLITS:
            per_class = self.counts.get(split, {})
            detail = ", ".join(f"{name} {n}" for name, n in sorted(per_class.items()))
            lines.append(f"  {split}: {sum(per_class.values())}" + (f" ({detail})" if detail else ""))
        for image_id, reason in self.skipped:
            lines.append(f"  skipped image {image_id}: {reason}")
        return "\n".join(lines)


def _check_fractions(split: tuple[float, float, float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in split)
    if len(values) != 3 or any(not np.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise NmidError(f"split must be three non-negative fractions (train, val, test), not {split}")
    if values[0] == 0:
        raise NmidError("the train fraction of the split must be above 0")
    total = sum(values)
    return (values[0] / total, values[1] / total, values[2] / total)


def _targets(n: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    """Split ``n`` into whole counts by largest remainder (ties go to train, then val)."""
    exact = [n * f for f in fractions]
    counts = [int(np.floor(x)) for x in exact]
    order = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return dict(zip(SPLITS, counts, strict=True))


def assign_split(
    images: list[tuple[int, str, bool]],
    existing: dict[int, str],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> tuple[dict[int, str], int]:
    """A stratified split that never moves an image already assigned.

    Args:
        images: ``(image id, class, synthetic)`` of every image to export.
        existing: The library's stored split.
        fractions: Train, val and test fractions.
        seed: Seed of the shuffle of newly assigned images.

    Returns:
        ``({image id: split}, number newly assigned)``. Synthetic images are always
        in ``train``. For each class, new images fill each split up to its share of
        the class's real images, test first, so a class that grows gets test images
        from its new images only.
    """
    fractions = _check_fractions(fractions)
    assignment: dict[int, str] = {}
    by_class: dict[str, list[int]] = defaultdict(list)
    new = 0
    for image_id, label, synthetic in images:
        if synthetic:
            assignment[image_id] = "train"
            new += image_id not in existing
        else:
            by_class[label].append(image_id)
    for label in sorted(by_class):
        ids = sorted(by_class[label])
        have = Counter(existing[i] for i in ids if i in existing)
        fresh = [i for i in ids if i not in existing]
        for i in ids:
            if i in existing:
                assignment[i] = existing[i]
        # A seed per class (crc32 is stable across runs, unlike hash()) so that adding a
        # class does not reshuffle the others.
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        fresh = [fresh[k] for k in rng.permutation(len(fresh))]
        target = _targets(len(ids), fractions)
        pos = 0
        for split in ("test", "val"):
            need = max(0, target[split] - have[split])
            for image_id in fresh[pos : pos + need]:
                assignment[image_id] = split
            pos += min(need, len(fresh) - pos)
        for image_id in fresh[pos:]:
            assignment[image_id] = "train"
        new += len(fresh)
    return assignment, new


def _select(store: Store, include_pending: bool) -> list[ImageRecord]:
    chosen = []
    for image in store.iter_images(ImageFilter(unlabelled=False)):
        if image.review == "rejected" or (image.review == "pending" and not include_pending):
            continue
        chosen.append(image)
    return chosen


def _place(src: Path, dest: Path, mode: str) -> bool:
    """Write ``src`` to ``dest``; returns True when a link was asked for but a copy was made."""
    if mode == "hardlink":
        try:
            os.link(src, dest)
            return False
        except OSError:  # another drive, or a file system without hard links
            shutil.copyfile(src, dest)
            return True
    if mode == "symlink":
        try:
            os.symlink(src.resolve(), dest)
            return False
        except OSError:  # Windows without the symlink privilege
            shutil.copyfile(src, dest)
            return True
    shutil.copyfile(src, dest)
    return False


def _write_page(image: ImageRecord, dest: Path) -> None:
    """One page of a multi-page file as its own TIFF, samples unchanged."""
    import tifffile

    from nmid_desktop.core.images import DEFAULT_MAX_PIXELS, read_image

    # The image passed the user's pixel limit at import; page 0 may be larger than this page.
    raw = read_image(image.path, image.page, max_pixels=max(DEFAULT_MAX_PIXELS, image.width * image.height)).raw
    tifffile.imwrite(dest, raw)


def _row(image: ImageRecord, rel: str, split: str) -> dict[str, Any]:
    return {
        "id": image.id,
        "sha256": image.sha256,
        "page": image.page,
        "file": rel,
        "class": image.label,
        "split": split,
        "label_source": image.label_source,
        "actor": image.label_actor,
        "model": image.label_model,
        "prompt_version": image.label_prompt_version,
        "confidence": image.label_confidence,
        "label_at": image.label_at,
        "review": image.review,
        "pixel_size_m": image.pixel_size_m,
        "crop_box": list(image.crop_box) if image.crop_box else None,
        "synthetic": image.synthetic,
        "source_image_id": image.source_image_id,
        "original_name": image.original_name,
        "width": image.width,
        "height": image.height,
    }


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        # A spreadsheet would run "=HYPERLINK(...)" from a file name or an actor; OWASP's advice.
        return "'" + value
    return value


class _ContentChanged(Exception):
    """The source file's bytes differ from the sha256 stored at import."""


def _hash_copy(src: Path, dest: Path, expected: str) -> None:
    """Copy while hashing; on a mismatch the copy is removed and :class:`_ContentChanged` raised."""
    import hashlib

    from nmid_desktop.core.fileio import open_regular

    digest = hashlib.sha256()
    with open_regular(src) as source, open(dest, "xb") as target:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            target.write(chunk)
    if digest.hexdigest() != expected:
        dest.unlink(missing_ok=True)
        raise _ContentChanged(digest.hexdigest())


def _verify(src: Path, expected: str) -> None:
    from nmid_desktop.core.fileio import sha256_file

    actual = sha256_file(src)
    if actual != expected:
        raise _ContentChanged(actual)


def _write_view8(image: ImageRecord, dest: Path) -> None:
    """The model view (8-bit grey, data bar cropped) as PNG."""
    from PIL import Image

    from nmid_desktop.core.images import DEFAULT_MAX_PIXELS, model_input

    limit = max(DEFAULT_MAX_PIXELS, image.width * image.height)
    Image.fromarray(model_input(image.path, image.page, image.crop_box, max_pixels=limit)).save(dest, format="PNG")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's), or we cannot tell: keep its folder
    return True


def clean_stale_partials(parent: Path) -> list[Path]:
    """Remove export folders a killed export left in ``parent``; returns what was removed.

    A partial folder records its writer (host and pid); it is stale when that process
    no longer runs on this host. Folders of another host, or without an owner file and
    younger than a day, are left alone (an export may be running there).
    """
    import socket
    import time

    removed: list[Path] = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(".") and _PARTIAL in p.name and p.is_dir()]
    except OSError:
        return removed
    host = socket.gethostname()
    for folder in candidates:
        owner = folder / _OWNER_FILE
        try:
            text = owner.read_text(encoding="utf-8").split()
            stale = len(text) == 2 and text[0] == host and not _pid_alive(int(text[1]))
        except (OSError, ValueError):
            try:
                stale = time.time() - folder.stat().st_mtime > 86400
            except OSError:
                stale = False
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
    return removed


def export_dataset(
    store: Store,
    out_dir: Path,
    *,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    include_pending: bool = False,
    copy_mode: str = "copy",
    pixels: str = "raw",
) -> Job[ExportReport]:
    """Write the library's curated images to ``out_dir`` as an ImageFolder dataset with manifests.

    Args:
        store: The library.
        out_dir: A folder that does not exist yet, or is empty.
        split: Train, val and test fractions for images without a stored split.
        seed: Seed of the split of newly assigned images.
        include_pending: Also export labels nobody has reviewed (LMM or local predictions).
        copy_mode: ``copy``; ``hardlink`` (no extra space; editing an exported file then
            edits the library's copy); or ``symlink``. Links fall back to copies where the
            file system refuses them.
        pixels: ``raw`` (the files as imported) or ``view8`` (the 8-bit model view as PNG).

    Yields:
        Progress per image.

    Returns:
        The report; the split is stored in the library.

    Raises:
        NmidError: If ``out_dir`` exists and is not empty, or an argument is invalid.
    """
    if copy_mode not in COPY_MODES:
        raise NmidError(f"copy mode must be one of {', '.join(COPY_MODES)}, not {copy_mode!r}")
    if pixels not in PIXEL_MODES:
        raise NmidError(f"pixels must be one of {', '.join(PIXEL_MODES)}, not {pixels!r}")
    fractions = _check_fractions(split)
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise NmidError(f"{out_dir} already exists and is not empty; choose a new folder")
    images = _select(store, include_pending)
    assignment, newly = assign_split(
        [(im.id, im.label or "", im.synthetic) for im in images], store.get_split(), fractions, seed
    )
    dirnames = assign_dirnames(im.label for im in images if im.label)
    report = ExportReport(out_dir=out_dir, newly_assigned=newly)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        report.cleaned = len(clean_stale_partials(out_dir.parent))
        tmp = out_dir.parent / f".{out_dir.name}{_PARTIAL}{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        import socket

        (tmp / _OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n", encoding="utf-8")
    except OSError as exc:
        raise NmidError(f"cannot create the export folder beside {out_dir}: {exc.strerror or exc}") from None
    root = tmp.resolve()
    finished = False
    try:
        # Every class in every split (empty folders included): torchvision's indices then agree.
        for which in SPLITS:
            for folder in dirnames.values():
                (tmp / which / folder).mkdir(parents=True, exist_ok=True)
        with (tmp / "manifest.csv").open("w", newline="", encoding="utf-8") as csv_file, (
            tmp / "manifest.jsonl"
        ).open("w", encoding="utf-8") as jsonl_file, contextlib.ExitStack() as hf_files:
            # A class folder named like the metadata file would clash with it (and confuse HF): none then.
            clash = any(f.casefold() in ("metadata.jsonl", "metadata.csv") for f in dirnames.values())
            hf = {} if clash else {
                which: hf_files.enter_context((tmp / which / "metadata.jsonl").open("w", encoding="utf-8")) for which in SPLITS
            }
            writer = csv.DictWriter(csv_file, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            for n, image in enumerate(images, start=1):
                which = assignment[image.id]
                yield Progress(n - 1, len(images), f"{which}/{image.label}/{image.original_name}")
                multi_page = image.n_pages > 1
                suffix = ".tif" if multi_page else image.path.suffix.lower()
                if pixels == "view8":
                    suffix = ".png"
                if not _SUFFIX.match(suffix):
                    suffix = ""
                stem = safe_filename(Path(image.original_name).stem, max_length=60)
                page = f"_p{image.page}" if multi_page else ""
                label = _exported_label(image)
                rel = f"{which}/{dirnames[label]}/{image.id:06d}_{stem}{page}{suffix}"
                dest = tmp / rel
                # Names are sanitised already; this check is the last line of defence.
                if not dest.resolve().is_relative_to(root):
                    raise NmidError(f"export path {rel!r} would leave {out_dir}")
                if not image.path.is_file():
                    report.skipped.append((image.id, f"file missing: {image.path}"))
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    if pixels == "raw" and not multi_page and copy_mode == "copy":
                        _hash_copy(image.path, dest, image.sha256)
                    else:
                        _verify(image.path, image.sha256)
                        if pixels == "view8":
                            _write_view8(image, dest)
                        elif multi_page:
                            _write_page(image, dest)
                        else:
                            report.copied_instead += _place(image.path, dest, copy_mode)
                except _ContentChanged as exc:
                    report.mismatched.append(image.id)
                    report.skipped.append(
                        (image.id, f"content changed since import (sha256 {str(exc)[:12]}..., stored {image.sha256[:12]}...): "
                         f"not exported; import {image.path} again to label the new content")
                    )
                    continue
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                        # Every later file would fail the same way: stop, and leave nothing half-written.
                        raise NmidError(
                            f"the disk holding {out_dir} is full ({exc.strerror}): the export was stopped and its "
                            "partial folder removed; free some space and export again"
                        ) from None
                    report.skipped.append((image.id, f"cannot write: {exc.strerror or exc}"))
                    continue
                except ImageError as exc:
                    report.skipped.append((image.id, f"cannot write: {exc}"))
                    continue
                row = _row(image, rel, which)
                writer.writerow({k: _csv_value(v) for k, v in row.items()})
                jsonl_file.write(json.dumps(row, ensure_ascii=False) + "\n")
                # Hugging Face resolves file_name against the metadata file's own folder.
                if hf:
                    hf[which].write(json.dumps({"file_name": rel.split("/", 1)[1], **row}, ensure_ascii=False) + "\n")
                per_class = report.counts.setdefault(which, {})
                per_class[label] = per_class.get(label, 0) + 1
        described = {c.name: c for c in store.classes()}
        classes = {
            folder: {
                "name": name,
                "description": described[name].description if name in described else "",
                "color": described[name].color if name in described else "",
            }
            for name, folder in sorted(dirnames.items(), key=lambda kv: kv[1])
        }
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2, ensure_ascii=False), encoding="utf-8")
        # torchvision's own mapping (sorted folder names), written where any loader can take it.
        class_to_idx = {folder: i for i, folder in enumerate(sorted(dirnames.values()))}
        (tmp / "class_to_idx.json").write_text(json.dumps(class_to_idx, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / _OWNER_FILE).unlink(missing_ok=True)
        yield Progress(len(images), len(images), "finishing")
        written = {image.id for image in images} - {image_id for image_id, _ in report.skipped}
        store.set_split({i: s for i, s in assignment.items() if i in written})
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
        finished = True
    finally:
        if not finished:
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _exported_label(image: ImageRecord) -> str:
    """The label of an image chosen for export (only labelled images are chosen)."""
    if image.label is None:
        raise LibraryError(f"image {image.id} has no label and cannot be exported into a class folder")
    return image.label
