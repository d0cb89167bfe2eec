"""Embed a whole library, resumably, on this process or on a Ray cluster (``nmid embed``).

The use case is the same whatever the engine: find the library's images that have no
cached embedding for the encoder's key, embed them, write each batch to the store as it
arrives (so a cancelled or crashed run keeps its work and the next run resumes), and
report what was embedded, skipped and failed. ``engine="local"`` runs the encoder here
(``ml.embed.embed_images``); ``engine="ray"`` hands decoding and the encoder to Ray Data
(``nmid_desktop.cluster.ray_embed``, imported only then), while the store is written by
this process alone: SQLite wants one writer, and a cluster's workers need no database
access, only the image files.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from nmid_desktop.core.errors import ConfigError, NmidError
from nmid_desktop.core.jobs import Job, Progress
from nmid_desktop.core.store.base import ImageFilter, Store

if TYPE_CHECKING:
    from nmid_desktop.ml.encoders import Encoder

ENGINES = ("local", "ray")
CLUSTER_EXTRA_HINT = "pip install nmid-desktop[cluster]"
# (image ids, vectors (B, D) float32 L2-normalised, (image id, reason) of unreadable images)
EmbeddedBatch = tuple[list[int], np.ndarray, list[tuple[int, str]]]
_CHUNK = 1024  # images per local embedding call: bounds memory at any library size
_ID_CHUNK = 500


@dataclass(frozen=True)
class EmbedRow:
    """One image to embed, as plain data a Ray worker can receive.

    Attributes:
        image_id: Library image id.
        path: File the pixels are read from (must be readable where the encoder runs).
        page: Page of a multi-page file.
        crop_box: ``(x0, y0, x1, y1)`` of the micrograph proper, None for the full frame.
    """

    image_id: int
    path: str
    page: int
    crop_box: tuple[int, int, int, int] | None


@dataclass
class EmbedReport:
    """What an embedding run did.

    Attributes:
        encoder_key: The cache key written.
        engine: ``local`` or ``ray``.
        total: Images considered.
        skipped: Already embedded for that key (resumed runs skip them).
        embedded: Embedded and stored by this run.
        failed: ``(image_id, reason)`` of images that could not be read.
        seconds: Wall time of the run.
    """

    encoder_key: str
    engine: str
    total: int = 0
    skipped: int = 0
    embedded: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the command."""
        rate = f", {self.embedded / self.seconds:.1f} images/s" if self.embedded and self.seconds > 0 else ""
        return (
            f"embedded {self.embedded} of {self.total} images with {self.encoder_key} on {self.engine} "
            f"({self.skipped} already embedded, {len(self.failed)} failed) in {self.seconds:.1f} s{rate}"
        )


def pending_rows(store: Store, encoder_key: str, *, image_ids: Sequence[int] | None = None,
                 crop: bool = True) -> tuple[list[EmbedRow], int]:
    """The images still to embed for ``encoder_key`` and how many were considered.

    Args:
        store: The library.
        encoder_key: The encoder's cache key.
        image_ids: Restrict to these images (default: the whole library).
        crop: Give each row its stored crop box (False: the full frame).

    Returns:
        ``(rows, total)``; ``rows`` in image-id order.
    """
    have = set(store.embedded_ids(encoder_key).tolist())
    if image_ids is None:
        records = store.iter_images()
    else:
        wanted = [int(i) for i in dict.fromkeys(image_ids)]
        records = (r for s in range(0, len(wanted), _ID_CHUNK) for r in store.images(ImageFilter(ids=wanted[s : s + _ID_CHUNK])))
    rows, total = [], 0
    for record in records:
        total += 1
        if record.id not in have:
            rows.append(EmbedRow(record.id, str(record.path), int(record.page), record.crop_box if crop else None))
    rows.sort(key=lambda r: r.image_id)
    return rows, total


def embed_library(
    store: Store,
    encoder_name: str,
    *,
    engine: str = "local",
    address: str | None = None,
    num_cpus: int | None = 2,
    batch_size: int = 64,
    crop: bool = True,
    image_ids: Sequence[int] | None = None,
    encoder: Encoder | None = None,
) -> Job[EmbedReport]:
    """Embed the library's images that lack an embedding for the encoder (a job).

    Args:
        store: The library (this process writes it).
        encoder_name: Encoder name as for ``load_encoder`` (``NAME+VIEWS`` allowed).
        engine: ``local`` (this process) or ``ray`` (Ray Data; needs the ``cluster`` extra).
        address: Ray cluster address (``ray://host:10001`` or ``auto``); None starts a local Ray.
        num_cpus: CPUs of the local Ray (ignored with ``address``).
        batch_size: Images per encoder batch.
        crop: Use each image's stored data-bar crop box.
        image_ids: Only these images (default: all).
        encoder: An already loaded encoder for ``encoder_name`` (saves loading it again).

    Yields:
        Progress per stored batch (cancel points; work stored so far is kept).

    Returns:
        The :class:`EmbedReport`.

    Raises:
        ConfigError: Unknown engine, or Ray missing for ``engine="ray"``.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown embedding engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if batch_size < 1:
        raise NmidError(f"batch size must be positive, not {batch_size}")
    if engine == "ray":
        ray_job = _ray_module()  # fail before any work when Ray is missing
    if encoder is None:
        from nmid_desktop.inference.loader import load_encoder  # the engine-choosing one: no torch in the bundle

        encoder = load_encoder(encoder_name, library=store.root, device="cpu" if engine == "ray" else None)
    started = time.perf_counter()
    rows, total = pending_rows(store, encoder.key, image_ids=image_ids, crop=crop)
    report = EmbedReport(encoder.key, engine, total=total, skipped=total - len(rows))
    yield Progress(0, len(rows), f"{len(rows)} of {total} images to embed with {encoder.name}")
    if rows:
        if engine == "local":
            batches = _local_batches(encoder, rows, batch_size)
        else:
            plain = [(r.image_id, r.path, r.page, r.crop_box) for r in rows]
            batches = ray_job.embed_rows(plain, encoder_name, encoder_key=encoder.key, input_size=encoder.input_size,
                                         library=store.root, address=address, num_cpus=num_cpus, batch_size=batch_size)
        try:
            for ids, vectors, failed in batches:
                if ids:
                    store.put_embeddings(encoder.key, ids, vectors)
                report.embedded += len(ids)
                report.failed.extend(failed)
                done = report.embedded + len(report.failed)
                yield Progress(done, len(rows), f"embedded {done}/{len(rows)} on {engine}",
                               {"embedded": len(ids), "failed": failed})
        finally:
            batches.close()  # stops the Ray pipeline (or the local loader) on cancel
    report.seconds = time.perf_counter() - started
    return report


def _local_batches(encoder: Encoder, rows: list[EmbedRow], batch_size: int) -> Generator[EmbeddedBatch, None, None]:
    """``(ids, vectors (B, D), failed)`` per batch, embedded in this process, in chunks of rows."""
    from nmid_desktop.ml.embed import embed_local_batches

    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        yield from embed_local_batches(encoder, [(r.image_id, r.path, r.page, r.crop_box) for r in chunk], batch_size)


def _ray_module() -> ModuleType:
    """The Ray engine, or a clear error naming the extra to install."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"the ray engine needs Ray: {CLUSTER_EXTRA_HINT}") from exc
    from nmid_desktop.cluster import ray_embed

    return ray_embed
