"""The Ray engine of ``nmid embed``: Ray Data decodes, crops and embeds; the driver stores.

Ray Data (https://docs.ray.io/en/latest/data/) streams the rows through the cluster:
``from_items`` of plain ``(image id, path, page, crop box)`` rows, then ``map_batches``
with a callable class in an ``ActorPoolStrategy`` pool, so each actor loads the encoder
once and keeps it. On CPUs one actor per CPU decodes and embeds its batch (decoding in a
separate task stage would compete with the actors for the same cores); with GPUs, decoding
runs as CPU tasks and one actor per GPU embeds. Batches come back to the driver in the
order they finish; the caller writes them to the store. Every worker must be able to read
the image files at the paths the store records (a local Ray, or a shared library folder)
and must have nmid-desktop with the same encoder weights: an actor whose encoder key
differs from the driver's refuses to start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nmid_desktop.core.errors import NmidError

log = logging.getLogger(__name__)

# (image id, path, page, crop box or None): what the caller sends, as ``ml.embed`` rows
Row = tuple[int, str, int, "tuple[int, int, int, int] | None"]
# (image ids, vectors (B, D) float32, (image id, reason) of unreadable images)
Batch = tuple[list[int], np.ndarray, list[tuple[int, str]]]
_NO_BOX = (-1, -1, -1, -1)  # Arrow columns need one type: "no crop box" as a sentinel


class ClusterError(NmidError):
    """The Ray cluster could not be reached or a worker failed."""


def _decode(rows: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Rows -> ``image (B, S, S) uint8``, ``ok (B,)``, ``reason (B,)``; a bad file never fails the batch."""
    from nmid_desktop.core.errors import NmidError as _Err
    from nmid_desktop.core.images import model_input
    from nmid_desktop.ml.encoders import resize_square

    n = len(rows["image_id"])
    images = np.zeros((n, size, size), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    reasons = np.full(n, "", dtype=object)
    for i in range(n):
        x0, y0, x1, y1 = (int(v) for v in rows["box"][i])
        box = None if (x0, y0, x1, y1) == _NO_BOX else (x0, y0, x1, y1)
        try:
            view = model_input(Path(str(rows["path"][i])), int(rows["page"][i]), box)
            images[i] = resize_square(view, size)
            ok[i] = True
        except (_Err, OSError, ValueError, MemoryError) as exc:
            reasons[i] = str(getattr(exc, "reason", None) or exc or type(exc).__name__)[:200]
    return {"image_id": rows["image_id"], "image": images, "ok": ok, "reason": reasons.astype(str)}


class _Embedder:
    """A Ray Data actor: loads the encoder once, then embeds batch after batch.

    Args:
        encoder_name: As for ``load_encoder``.
        expected_key: The driver's encoder key; another key here means other weights.
        library: Library folder (its ``models/`` may hold a trained encoder).
        device: ``cpu`` or ``cuda``.
        decode: Decode the rows here (CPU pools) instead of receiving decoded images.
        threads: Torch threads of this actor (its CPU share).
    """

    def __init__(self, encoder_name: str, expected_key: str, library: str, device: str, decode: bool, threads: int) -> None:
        import torch

        from nmid_desktop.ml.encoders import load_encoder

        torch.set_num_threads(max(1, threads))
        self.encoder = load_encoder(encoder_name, library=Path(library), device=device)
        if self.encoder.key != expected_key:
            raise ClusterError(f"worker on {os.uname().nodename} has encoder {self.encoder.key}, the driver {expected_key}")
        self.decode = decode

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.decode:
            batch = _decode(batch, self.encoder.input_size)
        ok = np.asarray(batch["ok"], dtype=bool)
        vectors = np.zeros((len(ok), self.encoder.dim), dtype=np.float32)
        if ok.any():
            vectors[ok] = self.encoder.embed_prepared(np.ascontiguousarray(batch["image"][ok]))
        return {"image_id": np.asarray(batch["image_id"], dtype=np.int64), "vector": vectors, "ok": ok,
                "reason": np.asarray(batch["reason"], dtype=str)}


def _connect(address: str | None, num_cpus: int | None) -> bool:
    """Start or join Ray; True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            # Ray starts its workers at niceness 15 by default; a local Ray on a desktop would then
            # lose every core to any other program, so it runs at the single-process path's priority.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ClusterError(f"could not start {where}: {exc}") from exc
    # Ray Data logs each execution plan at INFO on stderr; the command prints its own progress.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return True


def embed_rows(
    rows: Sequence[Row],
    encoder_name: str,
    *,
    encoder_key: str,
    input_size: int,
    library: Path,
    address: str | None = None,
    num_cpus: int | None = 2,
    batch_size: int = 64,
) -> Generator[Batch, None, None]:
    """Embed rows on Ray; yields ``(ids, vectors (B, D), failed)`` per finished batch.

    Args:
        rows: Images to embed.
        encoder_name: Encoder to load in each actor.
        encoder_key: The driver's key for it (checked by every actor).
        input_size: The encoder's input side ``S`` (for the GPU pipeline's decode tasks).
        library: Library folder (for a library's own trained encoder).
        address: Cluster address; None starts a local Ray with ``num_cpus`` CPUs.
        num_cpus: CPUs of the local Ray.
        batch_size: Images per actor call.

    Raises:
        ClusterError: Ray could not start or a worker failed.
    """
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    started = _connect(address, num_cpus)
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        DataContext.get_current().enable_progress_bars = False
        items = [{"image_id": int(i), "path": str(p), "page": int(g), "box": list(b or _NO_BOX)} for i, p, g, b in rows]
        ds: Any = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 1000)))
        common = {"encoder_name": encoder_name, "expected_key": encoder_key, "library": str(library)}
        if gpus:
            ds = ds.map_batches(_decode, fn_kwargs={"size": input_size}, batch_size=batch_size, num_cpus=1)
            ds = ds.map_batches(_Embedder, batch_size=batch_size, num_gpus=1, num_cpus=1,
                                compute=ActorPoolStrategy(min_size=1, max_size=gpus),
                                fn_constructor_kwargs={**common, "device": "cuda", "decode": False, "threads": 1})
        else:
            ds = ds.map_batches(_Embedder, batch_size=batch_size, num_cpus=1,
                                compute=ActorPoolStrategy(min_size=1, max_size=cpus),
                                fn_constructor_kwargs={**common, "device": "cpu", "decode": True, "threads": 1})
        log.info("ray embedding: %d images on %d CPUs, %d GPUs", len(items), cpus, gpus)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                ok = np.asarray(batch["ok"], dtype=bool)
                ids = np.asarray(batch["image_id"], dtype=np.int64)
                failed = [(int(i), str(reason)) for i, reason in zip(ids[~ok], np.asarray(batch["reason"])[~ok], strict=True)]
                yield ids[ok].tolist(), np.asarray(batch["vector"], dtype=np.float32)[ok], failed
        except ray.exceptions.RayError as exc:
            raise ClusterError(f"a Ray worker failed: {str(exc).strip().splitlines()[-1][:300]}") from exc
    finally:
        if started:
            ray.shutdown()
