"""Embedding jobs: library images (cached per encoder key) and loose files (a dropped image).

Images are decoded, cropped to the micrograph proper (data bar left out) and resized
in a background thread (or, for the torch engine with worker processes, a torch
``DataLoader``), so decoding overlaps the network's compute. torch is imported only for
that DataLoader: with the ONNX Runtime encoder this module runs without torch.
An unreadable image is reported and skipped; it never kills its batch. Each batch is
cached in the library as soon as it is embedded, so a cancelled job keeps its work.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.jobs import Job, Progress
from nmid_desktop.core.store.base import ImageFilter, Store
from nmid_desktop.inference.preprocess import resize_square

log = logging.getLogger(__name__)

_ID_CHUNK = 500  # image ids per store query
T = TypeVar("T")
_Row = tuple[int, str, int, "tuple[int, int, int, int] | None"]  # (image id, path, page, crop box)
_Item = tuple[int, "np.ndarray | None", str]  # (key, (S, S) uint8 image or None, failure reason)
Encoder = Any  # the torch ``ml.encoders.Encoder`` or ``inference.onnx_encoder.OnnxEncoder`` (duck-typed)


class Embedded(tuple):
    """``(ids, vectors)`` of an embedding job, plus the images that failed.

    Unpacks like a pair: ``ids, vectors = result``. ``ids`` is ``(N,)`` int64 in the
    order asked for, ``vectors`` ``(N, D)`` float32 L2-normalised; failed images are
    left out of both and listed in ``failed`` as ``(image_id, reason)``.
    """

    failed: list[tuple[int, str]]

    def __new__(cls, ids: np.ndarray, vectors: np.ndarray, failed: list[tuple[int, str]]) -> Embedded:
        obj = super().__new__(cls, (ids, vectors))
        obj.failed = failed
        return obj

    @property
    def ids(self) -> np.ndarray:
        """``(N,)`` int64 image ids."""
        return self[0]

    @property
    def vectors(self) -> np.ndarray:
        """``(N, D)`` float32 embeddings."""
        return self[1]


def default_workers(encoder: Encoder, n_images: int, batch_size: int) -> int:
    """DataLoader workers for embedding.

    Workers only pay off with several batches. On a GPU several decode while it
    computes. On a CPU torch's threads already fill every core, and on 2 cores a
    decoding worker beside them cost throughput (NEU JPEGs: ViT 343 -> 259 images/s,
    EfficientNet 33 -> 31); from 4 cores on, one worker takes decoding off the critical
    path, which matters for large SEM TIFFs that take longer to decode than to embed.
    ONNX Runtime (and any engine but torch) gets none: its threads fill the cores, and the
    prefetch thread already overlaps decoding with compute, without torch.
    """
    if getattr(encoder, "engine", "torch") != "torch" or n_images <= batch_size:
        return 0
    cores = os.cpu_count() or 1
    if encoder.device.startswith("cuda"):
        return max(1, min(6, cores - 1))
    return 1 if cores >= 4 else 0


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc or type(exc).__name__)[:200]


class _LibraryImages:
    """Decode ``(id, path, page, crop_box)`` rows to ``(S, S)`` uint8 network inputs."""

    def __init__(self, rows: list[_Row], size: int, max_pixels: int | None) -> None:
        self.rows = rows
        self.size = size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str]:
        from nmid_desktop.core.images import model_input

        image_id, path, page, box = self.rows[index]
        try:
            kwargs: dict[str, Any] = {} if self.max_pixels is None else {"max_pixels": self.max_pixels}
            return image_id, resize_square(model_input(Path(path), page, box, **kwargs), self.size), ""
        except (NmidError, OSError, ValueError, MemoryError) as exc:
            return image_id, None, _reason(exc)


class _LooseFiles:
    """Decode files outside the library, detecting and cropping the data bar when asked."""

    def __init__(self, paths: Sequence[Path], size: int, crop: bool) -> None:
        self.paths = [Path(p) for p in paths]
        self.size = size
        self.crop = crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str]:
        from nmid_desktop.core.databar import find_micrograph_box
        from nmid_desktop.core.images import crop, read_image

        try:
            view8 = read_image(self.paths[index]).view8
            if self.crop:
                view8 = crop(view8, find_micrograph_box(view8))
            return index, resize_square(view8, self.size), ""
        except (NmidError, OSError, ValueError, MemoryError) as exc:
            return index, None, _reason(exc)


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(batches: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``batches`` in a background thread, up to ``depth`` batches ahead.

    Without DataLoader workers this is what lets decoding overlap compute: Pillow's
    decoders and resizers and torch's kernels release the GIL, so on 2 cores the ViT
    embedded NEU at ~1.3x the rate of decoding and computing in turn, with no second
    process competing with torch's threads. Closing the iterator stops the thread after
    the batch it is decoding.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Raised(exc))

    thread = threading.Thread(target=produce, name="nmid-embed-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=60)


def _collate(batch: list[_Item]) -> tuple[list[int], np.ndarray | None, list[tuple[int, str]]]:
    """Split a batch into readable images ``(B, S, S)`` uint8 and failures."""
    ids = [key for key, image, _ in batch if image is not None]
    images = [image for _, image, _ in batch if image is not None]
    failed = [(key, reason) for key, image, reason in batch if image is None]
    return ids, (np.stack(images) if images else None), failed


def _collate_torch(batch: list[_Item]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """:func:`_collate` with a torch tensor, so the DataLoader can pin it for CUDA."""
    import torch

    ids, images, failed = _collate(batch)
    return ids, (torch.from_numpy(images) if images is not None else None), failed


def _batches(dataset: _LibraryImages | _LooseFiles, batch_size: int) -> Iterator[Any]:
    """Decode and collate batches in order, in the calling thread."""
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        yield _collate([dataset[i] for i in range(start, stop)])


def _loader(dataset: _LibraryImages | _LooseFiles, encoder: Encoder, batch_size: int,
            num_workers: int | None) -> Iterator[Any]:
    """Batches of decoded images: from DataLoader workers, or prefetched by a thread."""
    workers = default_workers(encoder, len(dataset), batch_size) if num_workers is None else num_workers
    if workers:
        from torch.utils.data import DataLoader

        return iter(DataLoader(
            dataset,  # type: ignore[arg-type]  # a map-style dataset: __len__ and __getitem__
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate_torch,
            pin_memory=str(encoder.device).startswith("cuda"),
            prefetch_factor=2,
        ))
    if len(dataset) <= batch_size:
        return _batches(dataset, batch_size)
    return prefetched(_batches(dataset, batch_size))


def _library_rows(store: Store, ids: list[int], crop: bool) -> tuple[list[_Row], list[tuple[int, str]]]:
    rows: list[_Row] = []
    found: set[int] = set()
    for start in range(0, len(ids), _ID_CHUNK):
        for record in store.images(ImageFilter(ids=ids[start : start + _ID_CHUNK])):
            found.add(record.id)
            rows.append((record.id, str(record.path), record.page, record.crop_box if crop else None))
    missing = [(i, "no such image in the library") for i in ids if i not in found]
    return rows, missing


def embed_images(
    store: Store,
    encoder: Encoder,
    image_ids: Sequence[int] | None = None,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    crop: bool = True,
    max_pixels: int | None = None,
) -> Job[Embedded]:
    """Embed library images that have no cached embedding for ``encoder.key``.

    Args:
        store: The library.
        encoder: The encoder; its ``key`` names the cache.
        image_ids: Which images (default: all).
        batch_size: Images per forward pass.
        num_workers: DataLoader worker processes (default: :func:`default_workers`).
        crop: Use each image's stored data bar crop box (False embeds the full frame).
        max_pixels: Decompression-bomb limit (default: ``core.images``'s).

    Yields:
        Progress per batch; ``data`` is ``{"embedded": n, "failed": [(id, reason), ...]}``
        for that batch.

    Returns:
        :class:`Embedded` ``(ids, vectors)`` of every requested image that has an
        embedding (cached or new), in the requested order, with ``failed``.
    """
    if batch_size < 1:
        raise NmidError(f"batch size must be positive, not {batch_size}")
    ids = [int(i) for i in image_ids] if image_ids is not None else [r.id for r in store.iter_images()]
    cached_ids, cached_vecs = store.get_embeddings(encoder.key, ids)
    have = set(cached_ids.tolist())
    todo = [i for i in dict.fromkeys(ids) if i not in have]
    failed: list[tuple[int, str]] = []
    new_ids: list[np.ndarray] = []
    new_vecs: list[np.ndarray] = []
    if todo:
        rows, missing = _library_rows(store, todo, crop)
        failed.extend(missing)
        loader = _loader(_LibraryImages(rows, encoder.input_size, max_pixels), encoder, batch_size, num_workers)
        done = 0
        for batch_ids, images, batch_failed in loader:
            vectors = encoder.embed_prepared(images) if images is not None else np.zeros((0, encoder.dim), np.float32)
            if batch_ids:
                store.put_embeddings(encoder.key, batch_ids, vectors)
                new_ids.append(np.asarray(batch_ids, dtype=np.int64))
                new_vecs.append(vectors)
            for image_id, reason in batch_failed:
                log.warning("image %s not embedded: %s", image_id, reason)
            failed.extend(batch_failed)
            done += len(batch_ids) + len(batch_failed)
            yield Progress(done, len(rows), f"embedding with {encoder.name}",
                           {"embedded": len(batch_ids), "failed": batch_failed})
    # Assemble cached and new vectors in the order asked for.
    all_ids = np.concatenate([cached_ids.astype(np.int64), *new_ids]) if new_ids else cached_ids.astype(np.int64)
    parts = [cached_vecs.reshape(len(cached_ids), -1)] if len(cached_ids) else []
    all_vecs = np.concatenate(parts + new_vecs) if parts or new_vecs else np.zeros((0, encoder.dim), np.float32)
    position = {int(i): n for n, i in enumerate(all_ids)}
    order = [position[i] for i in ids if i in position]
    return Embedded(all_ids[order], all_vecs[order].astype(np.float32, copy=False), failed)


def embed_local_batches(
    encoder: Encoder,
    rows: Sequence[_Row],
    batch_size: int = 64,
    *,
    num_workers: int | None = None,
    max_pixels: int | None = None,
) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, str]]]]:
    """Embed ``(image id, path, page, crop box)`` rows in this process, batch by batch, storing nothing.

    The single-process engine of ``nmid embed`` (the caller writes each batch to the store) and
    the reference the Ray engine is compared against.

    Yields:
        ``(ids, vectors (B, D) float32, failed [(image id, reason)])`` per batch.
    """
    loader = _loader(_LibraryImages(list(rows), encoder.input_size, max_pixels), encoder, batch_size, num_workers)
    try:
        for batch_ids, images, batch_failed in loader:
            vectors = encoder.embed_prepared(images) if images is not None else np.zeros((0, encoder.dim), np.float32)
            for image_id, reason in batch_failed:
                log.warning("image %s not embedded: %s", image_id, reason)
            yield list(batch_ids), vectors, list(batch_failed)
    finally:
        close = getattr(loader, "close", None)
        if close is not None:
            close()


def embed_paths(
    encoder: Encoder,
    paths: Sequence[Path],
    *,
    crop: bool = True,
    batch_size: int = 64,
    num_workers: int | None = None,
) -> Job[np.ndarray]:
    """Embed image files outside the library (a dropped image, an evaluation folder).

    Args:
        encoder: The encoder.
        paths: Image files (first page of multi-page files).
        crop: Detect the SEM data bar (``core.databar.find_micrograph_box``) and leave it out.
        batch_size: Images per forward pass.
        num_workers: DataLoader worker processes (default: :func:`default_workers`).

    Yields:
        Progress per batch; ``data['failed']`` lists ``(path, reason)`` of that batch.
        The last report's ``data['all_failed']`` lists every failure.

    Returns:
        ``(N, D)`` float32 aligned with ``paths``; the row of an unreadable file is NaN
        (check ``np.isnan(rows[:, 0])``), so one bad file never hides the others.
    """
    out = np.full((len(paths), encoder.dim), np.nan, dtype=np.float32)
    failed: list[tuple[str, str]] = []
    if not paths:
        return out
    loader = _loader(_LooseFiles(paths, encoder.input_size, crop), encoder, batch_size, num_workers)
    done = 0
    for indices, images, batch_failed in loader:
        if images is not None:
            out[indices] = encoder.embed_prepared(images)
        named = [(str(paths[i]), reason) for i, reason in batch_failed]
        for path, reason in named:
            log.warning("%s not embedded: %s", path, reason)
        failed.extend(named)
        done += len(indices) + len(batch_failed)
        last = done >= len(paths)
        data: dict[str, Any] = {"failed": named}
        if last:
            data["all_failed"] = failed
        yield Progress(done, len(paths), f"embedding with {encoder.name}", data)
    return out
