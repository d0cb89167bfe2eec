"""Self-supervised encoder training with SimCLR, as a cancellable job.

- [0] SimCLR: Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive
  Learning of Visual Representations", ICML 2020, https://arxiv.org/abs/2002.05709

Recipe of the GDL-NMID paper (few-shot classification of electron micrographs by a
multimodal model from retrieved demonstrations, its micrograph encoder trained
self-supervised): two augmented views per image
(:mod:`nmid_desktop.ml.augment`), encoder -> projection head -> NT-Xent with a
temperature, Adam at lr 1e-3, batch 48, up to 50 epochs, learning rate halved after 5
epochs without validation improvement (ReduceLROnPlateau), early stopping on a held-out
validation loss. The best backbone (by validation loss) is what gets saved; the
projection head is discarded, as in SimCLR.

Writing is all-or-nothing: weights go to a temporary file, are hashed, and are moved
into place with ``os.replace``; then the manifest is replaced the same way. A cancelled
or failed run writes nothing, so the last good encoder stays usable.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from nmid_desktop.core.errors import NmidError
from nmid_desktop.core.fileio import atomic_write_text
from nmid_desktop.core.jobs import CancelToken, Job, Progress, ensure_worker_thread
from nmid_desktop.ml.augment import AugmentConfig, two_views
from nmid_desktop.ml.device import pick_device
from nmid_desktop.ml.encoders import as_grey_uint8, build_network, normalisation_tensors, normalise_batch
from nmid_desktop.ml.manifest import (
    EncoderManifest,
    encoder_key,
    file_sha256,
    load_manifest,
    normalisation_to_json,
    read_manifest_file,
)
from nmid_desktop.ml.ntxent import nt_xent_loss

log = logging.getLogger(__name__)

#: One training image: a file (data bar detected and cropped), ``(path, page, crop_box)``
#: (cropped to ``crop_box`` when not None), a decoded 2-D uint8 array, or a callable
#: returning one.
ImageSource = Path | str | tuple | np.ndarray | Callable[[], np.ndarray]

INITS = ("scratch", "imagenet")
_MIN_DELTA = 1e-4  # a smaller validation-loss change is not an improvement


@dataclass
class TrainResult:
    """What a finished SimCLR run wrote and how it went.

    Attributes:
        name: Name of the trained encoder (its manifest's ``name``).
        manifest_path: The manifest written (``<out_dir>/<name>.json``).
        weights_path: The weights written beside it.
        sha256: Hash of the weights file.
        key: Embedding-cache key of the new encoder (``name@sha256[:12]``).
        epochs_run: Epochs completed.
        best_epoch: Epoch (1-based) whose weights were kept.
        best_loss: Its monitored loss.
        monitored: ``val_loss``, or ``train_loss`` when the set was too small to hold images out.
        stopped_early: True when early stopping ended the run before ``epochs``.
        history: Per-epoch records (epoch, train_loss, val_loss, lr, seconds, eta_s, device).
        n_train: Images trained on.
        n_val: Images held out for validation.
        device: Torch device used.
        seconds: Wall time of the whole job.
        failed: ``(source, reason)`` of images that could not be read and were skipped.
    """

    name: str
    manifest_path: Path
    weights_path: Path
    sha256: str
    key: str
    epochs_run: int
    best_epoch: int
    best_loss: float
    monitored: str
    stopped_early: bool
    history: list[dict[str, Any]]
    n_train: int
    n_val: int
    device: str
    seconds: float
    failed: list[tuple[str, str]] = field(default_factory=list)
    graph_path: Path | None = None


# -- images -------------------------------------------------------------------------------


def describe_source(source: ImageSource) -> str:
    """A short name of a training source for messages."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, tuple) and source:
        return f"{source[0]} page {source[1] if len(source) > 1 else 0}"
    if isinstance(source, np.ndarray):
        return f"array {source.shape}"
    return getattr(source, "__name__", repr(source))


def load_source(source: ImageSource) -> np.ndarray:
    """Decode one training source to a 2-D uint8 array of the micrograph proper.

    Raises:
        NmidError: (``ImageError``) when the file cannot be read.
    """
    from nmid_desktop.core.images import model_input

    if isinstance(source, np.ndarray):
        return as_grey_uint8(source)
    if isinstance(source, (str, Path)):
        from nmid_desktop.core.databar import find_micrograph_box
        from nmid_desktop.core.images import crop, read_image

        view8 = read_image(Path(source)).view8
        return crop(view8, find_micrograph_box(view8))
    if isinstance(source, tuple):
        path = Path(source[0])
        page = int(source[1]) if len(source) > 1 else 0
        box = tuple(source[2]) if len(source) > 2 and source[2] is not None else None
        return model_input(path, page, box)
    if callable(source):
        return as_grey_uint8(source())
    raise TypeError(f"not an image source: {type(source).__name__}")


def shrink(image: np.ndarray, side: int) -> np.ndarray:
    """Downsize so the longer side is at most ``side`` (aspect kept); smaller images are unchanged."""
    height, width = image.shape
    if max(height, width) <= side:
        return image
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0))


class PairDataset(Dataset):
    """Two augmented views per image, seeded by ``(seed, epoch, index)``.

    Items are preloaded arrays or sources decoded on access (large libraries). Views
    depend only on the seed, the epoch and the index, never on which worker process
    made them, so a run is reproducible for any ``num_workers``.

    Item shape: ``(2, S, S)`` uint8, or None when a source cannot be read.
    """

    def __init__(self, items: Sequence[np.ndarray | ImageSource], cfg: AugmentConfig, seed: int, side: int) -> None:
        self.items = list(items)
        self.cfg = cfg
        self.seed = seed
        self.side = side
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tensor | None:
        item = self.items[index]
        if isinstance(item, np.ndarray):
            image = item
        else:
            try:
                image = shrink(load_source(item), self.side)
            except (NmidError, OSError, ValueError):
                return None  # reported by the preload check; a lazy failure drops one item
        rng = np.random.default_rng([self.seed, self.epoch, index])
        first, second = two_views(image, rng, self.cfg)
        return torch.from_numpy(np.stack([first, second]))


def _collate(batch: list[Tensor | None]) -> Tensor:
    """Stack readable items: ``(B, 2, S, S)`` uint8 (B may be 0)."""
    good = [item for item in batch if item is not None]
    if not good:
        return torch.zeros(0, 2, 1, 1, dtype=torch.uint8)
    return torch.stack(good)


# -- network --------------------------------------------------------------------------------


class SimCLRNet(nn.Module):
    """Backbone plus the SimCLR projection head g(h) = W2 ReLU(BN(W1 h)).

    Shape: ``(B, C, S, S) -> (h: (B, D), z: (B, proj_dim))``.
    """

    def __init__(self, backbone: nn.Module, dim: int, hidden: int = 512, proj_dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, proj_dim)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encode and project."""
        h = self.backbone(x)
        return h, self.head(h)


def _backbone(manifest: EncoderManifest, init: str) -> nn.Module:
    if init == "scratch":
        return build_network(manifest, load_weights=False)
    net = build_network(manifest, load_weights=True)
    inner = getattr(net, "model", None)
    if inner is not None and hasattr(inner, "reset_classifier"):
        inner.reset_classifier(0)  # the ImageNet classifier is not part of the encoder
    return net


def default_num_workers(device: str) -> int:
    """DataLoader workers: parallel augmentation when a GPU computes, none on the CPU.

    On the CPU torch's threads already use every core: one augmentation worker gained
    nothing on 2 cores (33.2 s vs 31.5 s per NEU epoch), and with OpenMP's default
    spinning wait it made an epoch 7x slower (see ``nmid_desktop/ml/__init__.py``).
    """
    cores = os.cpu_count() or 1
    if device.startswith("cuda"):
        return max(1, min(8, cores - 1))
    return 0


# -- writing --------------------------------------------------------------------------------


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _previous_weights(manifest_path: Path) -> Path | None:
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
        name = data["weights"]["file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = manifest_path.parent / name
    return path if path.parent == manifest_path.parent else None


def write_encoder(
    state: dict[str, Tensor], base: EncoderManifest, name: str, out_dir: Path, training: dict[str, Any]
) -> tuple[Path, Path, str]:
    """Save weights and manifest atomically into ``out_dir``.

    The weights file is named after its hash, so the manifest on disk always refers to
    a complete file whose hash it states, whatever moment a crash happens at.

    Returns:
        ``(manifest_path, weights_path, sha256)``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / f"{name}.json"
    old_weights = _previous_weights(manifest_path)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}-", suffix=".pt.tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        sha = file_sha256(Path(tmp))
        weights_path = out_dir / f"{name}-{sha[:12]}.pt"
        os.replace(tmp, weights_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    manifest = {
        "name": name,
        "architecture": base.architecture,
        "input_size": base.input_size,
        "channels": base.channels,
        "normalisation": normalisation_to_json(base),
        "embedding_dim": base.embedding_dim,
        "config": base.config,
        "weights": {"file": weights_path.name, "layout": "native"},
        "sha256": sha,
        "description": f"{base.name} trained self-supervised (SimCLR) on {training['n_train']} images",
        "license": "trained by the user of this library",
        "training": training,
    }
    _atomic_json(manifest_path, manifest)
    if old_weights is not None and old_weights != weights_path:
        old_weights.unlink(missing_ok=True)
    return manifest_path, weights_path, sha


def export_graph_beside(manifest_path: Path) -> Path | None:
    """Write the trained encoder's ONNX graph beside its weights, for the torch-free engine.

    Without the ``onnx`` package nothing is written (a warning says so): the graph is then
    exported into the cache at first use by a full install.
    """
    from nmid_desktop.inference.graph import GraphError
    from nmid_desktop.ml.onnx_export import export_beside_manifest

    try:
        return export_beside_manifest(read_manifest_file(manifest_path)).path
    except GraphError as exc:
        log.warning("%s; the graph will be exported at first use instead", exc)
        return None


# -- the job --------------------------------------------------------------------------------


def _preload(
    sources: Sequence[ImageSource], side: int, failed: list[tuple[str, str]]
) -> Job[list[np.ndarray]]:
    """Decode every source once, shrunk to ``side``; unreadable ones go to ``failed``."""

    def one(source: ImageSource) -> np.ndarray | str:
        try:
            return shrink(load_source(source), side)
        except (NmidError, OSError, ValueError) as exc:
            return str(getattr(exc, "reason", None) or exc)

    images: list[np.ndarray] = []
    chunk = 32
    # Decoding releases the GIL in Pillow and tifffile, so two threads keep two cores busy.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for start in range(0, len(sources), chunk):
            part = sources[start : start + chunk]
            for source, result in zip(part, pool.map(one, part), strict=True):
                if isinstance(result, str):
                    failed.append((describe_source(source), result))
                else:
                    images.append(result)
            yield Progress(min(start + chunk, len(sources)), len(sources), "reading images", {"phase": "load"})
    return images


def _check_args(epochs: int, batch_size: int, lr: float, temperature: float, val_fraction: float, init: str) -> None:
    if epochs < 1:
        raise NmidError(f"epochs must be at least 1, not {epochs}")
    if batch_size < 2:
        raise NmidError(f"batch size must be at least 2 (contrastive pairs need negatives), not {batch_size}")
    if not lr > 0 or not temperature > 0:
        raise NmidError("learning rate and temperature must be positive")
    if not 0 <= val_fraction < 1:
        raise NmidError(f"val_fraction must be in [0, 1), not {val_fraction}")
    if init not in INITS:
        raise NmidError(f"init must be one of {', '.join(INITS)}, not {init!r}")


def train_simclr(
    images: Sequence[ImageSource],
    *,
    out_dir: Path,
    encoder_name: str = "micrograph-vit",
    init: str = "scratch",
    output_name: str | None = None,
    epochs: int = 50,
    batch_size: int = 48,
    lr: float | None = None,
    temperature: float = 0.1,
    val_fraction: float = 0.1,
    patience_lr: int = 5,
    early_stop_patience: int = 10,
    seed: int = 0,
    device: str | None = None,
    num_workers: int | None = None,
    augment: AugmentConfig | None = None,
    projection_dim: int = 128,
    preload_side: int = 256,
    max_preload_bytes: int = 1 << 30,
    library: Path | None = None,
    token: CancelToken | None = None,
) -> Job[TrainResult]:
    """Train an encoder with SimCLR and write it (weights + manifest) into ``out_dir``.

    Args:
        images: Training images (see :data:`ImageSource`); labels are not used.
        out_dir: Folder for ``<name>.json`` and ``<name>-<sha12>.pt`` (a library's ``models/``).
        encoder_name: Manifest giving the architecture (``micrograph-vit`` or
            ``efficientnet-lite0-imagenet``).
        init: ``scratch`` (random weights) or ``imagenet`` (start from the manifest's
            weights: SimCLR fine-tuning of the ImageNet EfficientNet).
        output_name: Name of the trained encoder; default ``micrograph-vit`` for the ViT
            from scratch, ``<base>-simclr`` otherwise.
        epochs: Maximum epochs.
        batch_size: Images per batch (2 x views in the forward pass).
        lr: Adam learning rate; default 1e-3 from scratch (the paper), 1e-4 when
            fine-tuning pretrained weights (1e-3 would wash the ImageNet features out).
        temperature: NT-Xent temperature.
        val_fraction: Share of images held out for the validation loss (none when fewer
            than 2 would be held out; the training loss is then monitored).
        patience_lr: Epochs without improvement before the learning rate is halved.
        early_stop_patience: Epochs without improvement before training stops.
        seed: Seeds the split, the initial weights, the shuffling and the augmentations.
        device: ``None``/``auto``, ``cpu``, ``cuda``...
        num_workers: DataLoader worker processes (default: see :func:`default_num_workers`).
        augment: Augmentation strengths (``output_size`` is set to the encoder's input size).
        projection_dim: Output size of the projection head.
        preload_side: Images are decoded once and kept at most this many pixels on a side.
        max_preload_bytes: Above this estimated size images are decoded on the fly instead.
        library: Library folder whose ``models/`` is searched for ``encoder_name``.
        token: Optional cancel token, checked between batches (closing the generator also works).

    Yields:
        Progress while reading images (``data['phase'] == 'load'``), after every batch
        (``'batch'``) and after every epoch (``'epoch'``, with ``epoch``, ``train_loss``,
        ``val_loss``, ``lr``, ``seconds``, ``eta_s``, ``device``).

    Returns:
        The :class:`TrainResult`.

    Raises:
        NmidError: Bad arguments, fewer than 2 readable images, or an unusable encoder.
        Cancelled: When the token is cancelled (nothing is written).
    """
    ensure_worker_thread("training")
    started = time.monotonic()
    extra_dirs = [Path(library) / "models"] if library is not None else []
    base = load_manifest(encoder_name, extra_dirs)
    lr = lr if lr is not None else (1e-3 if init == "scratch" else 1e-4)
    _check_args(epochs, batch_size, lr, temperature, val_fraction, init)
    if init == "imagenet" and not base.trained:
        raise NmidError(f"init 'imagenet' needs an encoder with weights; {base.name!r} has none")
    name = output_name or (
        "micrograph-vit" if base.architecture == "micrograph-vit" and init == "scratch"
        else f"{base.name.removesuffix('-imagenet')}-simclr"
    )
    resolved = pick_device(device)
    workers = default_num_workers(resolved) if num_workers is None else max(0, int(num_workers))
    cfg = augment or AugmentConfig()
    cfg = AugmentConfig(**{**cfg.__dict__, "output_size": base.input_size})

    failed: list[tuple[str, str]] = []
    sources = list(images)
    if len(sources) * preload_side * preload_side <= max_preload_bytes:
        items: list[Any] = yield from _preload(sources, preload_side, failed)
    else:
        items = sources  # too many to hold: decoded by the DataLoader workers every epoch
    if len(items) < 2:
        raise NmidError(f"SimCLR needs at least 2 readable images, found {len(items)}")

    # Hold out a validation set (seeded); too small a hold-out is no measurement at all.
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = int(round(len(items) * val_fraction))
    if n_val < 2 or len(items) - n_val < 2:
        n_val = 0
    val_items = [items[i] for i in order[:n_val]]
    train_items = [items[i] for i in order[n_val:]]
    monitored = "val_loss" if n_val else "train_loss"

    torch.manual_seed(seed)
    backbone = _backbone(base, init)
    model = SimCLRNet(backbone, base.embedding_dim, proj_dim=projection_dim).to(resolved)
    mean, std = normalisation_tensors(base, resolved)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, mode="min", factor=0.5, patience=patience_lr)

    train_set = PairDataset(train_items, cfg, seed, preload_side)
    # Validation views are fixed (one reserved epoch slot) so every epoch is scored on the same pairs.
    val_set = PairDataset(val_items, cfg, seed + 1, preload_side)
    val_set.epoch = 10**6
    generator = torch.Generator().manual_seed(seed)
    pin = resolved.startswith("cuda")
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(train_set) > batch_size,
        num_workers=workers,
        collate_fn=_collate,
        generator=generator,
        pin_memory=pin,
    )
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=_collate)
    batches = len(train_loader)
    total = epochs * batches

    def run_batch(pairs: Tensor) -> Tensor:
        b = pairs.shape[0]
        views = pairs.to(resolved, non_blocking=True).transpose(0, 1).reshape(2 * b, *pairs.shape[2:])
        _, z = model(normalise_batch(views, mean, std, resolved))  # (2B, proj_dim)
        return nt_xent_loss(z[:b], z[b:], temperature)

    history: list[dict[str, Any]] = []
    best_loss = math.inf
    best_state: dict[str, Tensor] | None = None
    best_epoch = 0
    bad_epochs = 0
    stopped_early = False
    step = 0
    epoch_times: list[float] = []
    for epoch in range(1, epochs + 1):
        epoch_start = time.monotonic()
        train_set.epoch = epoch
        model.train()
        loss_sum, seen = 0.0, 0
        for index, pairs in enumerate(train_loader, start=1):
            if token is not None:
                token.raise_if_cancelled()
            step += 1
            if pairs.shape[0] >= 2:
                loss = run_batch(pairs)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                loss_sum += float(loss.detach()) * pairs.shape[0]
                seen += pairs.shape[0]
            elapsed = time.monotonic() - started
            per_batch = (time.monotonic() - epoch_start) / index
            per_epoch = sum(epoch_times) / len(epoch_times) if epoch_times else per_batch * batches
            eta = per_batch * (batches - index) + per_epoch * (epochs - epoch)
            running = loss_sum / seen if seen else float("nan")
            yield Progress(
                step, total, f"epoch {epoch}/{epochs} batch {index}/{batches} loss {running:.4f}",
                {"phase": "batch", "epoch": epoch, "batch": index, "train_loss": running,
                 "lr": optimiser.param_groups[0]["lr"], "seconds": elapsed, "eta_s": eta, "device": resolved},
            )
        if not seen:
            raise NmidError("no training batch could be read; check the images")
        train_loss = loss_sum / seen

        val_loss: float | None = None
        if n_val:
            model.eval()
            v_sum, v_seen = 0.0, 0
            with torch.no_grad():
                for pairs in val_loader:
                    if pairs.shape[0] >= 2:
                        v_sum += float(run_batch(pairs)) * pairs.shape[0]
                        v_seen += pairs.shape[0]
            val_loss = v_sum / v_seen if v_seen else None
        current = val_loss if val_loss is not None else train_loss
        lr_used = optimiser.param_groups[0]["lr"]
        scheduler.step(current)
        if current < best_loss - _MIN_DELTA:
            best_loss, best_epoch, bad_epochs = current, epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.backbone.state_dict().items()}
        else:
            bad_epochs += 1
        seconds = time.monotonic() - epoch_start
        epoch_times.append(seconds)
        stop = bad_epochs >= early_stop_patience
        remaining = 0 if stop else epochs - epoch
        record = {
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr_used,
            "seconds": seconds, "eta_s": sum(epoch_times) / len(epoch_times) * remaining, "device": resolved,
        }
        history.append(record)
        val_text = f" val {val_loss:.4f}" if val_loss is not None else ""
        yield Progress(
            epoch * batches, total,
            f"epoch {epoch}/{epochs} loss {train_loss:.4f}{val_text} lr {lr_used:.2e} {seconds:.1f}s",
            {"phase": "epoch", **record},
        )
        if stop:
            stopped_early = epoch < epochs
            break

    if best_state is None:  # every epoch produced NaN
        raise NmidError("training diverged (the loss was never finite); try a lower learning rate")
    training = {
        "method": "SimCLR (arXiv:2002.05709)",
        "base": base.name,
        "init": init,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        monitored: best_loss,
        "batch_size": batch_size,
        "lr": lr,
        "temperature": temperature,
        "seed": seed,
        "n_train": len(train_items),
        "n_val": n_val,
        "device": resolved,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    manifest_path, weights_path, sha = write_encoder(best_state, base, name, Path(out_dir), training)
    graph_path = export_graph_beside(manifest_path)
    return TrainResult(
        name=name,
        manifest_path=manifest_path,
        weights_path=weights_path,
        sha256=sha,
        key=encoder_key(name, sha),
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_loss=best_loss,
        monitored=monitored,
        stopped_early=stopped_early,
        history=history,
        n_train=len(train_items),
        n_val=n_val,
        device=resolved,
        seconds=time.monotonic() - started,
        failed=failed,
        graph_path=graph_path,
    )
