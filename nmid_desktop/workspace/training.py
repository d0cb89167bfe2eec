"""The training use case: which images train an encoder, and the training job, for both faces.

One rule, used by ``nmid train`` and the window's Training tab alike (they had drifted: the window
kept the fixed test split and dropped accepted synthetic images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nmid_desktop.core.jobs import CancelToken, Job
from nmid_desktop.core.store import Store, open_library

if TYPE_CHECKING:
    from nmid_desktop.ml.simclr import TrainResult

# Architecture presets the window offers: (encoder name, initialisation, description).
PRESETS = {
    "vit-scratch": ("micrograph-vit", "scratch", "The paper's ViT (224 px, 32 px patches, dim 128), from scratch"),
    "effnet-finetune": ("efficientnet-lite0-imagenet", "imagenet", "EfficientNet-Lite0 from ImageNet, fine-tuned"),
}

TrainingSource = tuple[Path, int, "tuple[int, int, int, int] | None"]


def training_sources(
    store: Store,
    *,
    include_test: bool = False,
    crop_data_bar: bool = True,
    max_images: int | None = None,
) -> list[TrainingSource]:
    """``(path, page, crop_box)`` of every image fit for self-supervised training, in library order.

    Rejected images are out; synthetic images only count once an expert accepted them;
    images of the fixed test split are out unless ``include_test`` (training on them, even
    without their labels, would flatter an evaluation on that split).

    Args:
        store: The library.
        include_test: Also train on the fixed test split's images.
        crop_data_bar: Give the micrograph proper (the crop box) rather than the whole frame.
        max_images: At most this many (None: all).
    """
    test_ids = set() if include_test else {i for i, s in store.get_split().items() if s == "test"}
    sources: list[TrainingSource] = []
    for record in store.iter_images():
        if record.review == "rejected" or record.id in test_ids:
            continue
        if record.synthetic and record.review != "accepted":
            continue
        sources.append((record.path, record.page, record.crop_box if crop_data_bar else None))
        if max_images is not None and len(sources) >= max_images:
            break
    return sources


@dataclass(frozen=True)
class TrainingRequest:
    """What to train (plain data, for a worker or the command line).

    Attributes:
        encoder_name: Architecture, e.g. ``micrograph-vit``.
        init: ``scratch`` or ``imagenet``.
        epochs: Maximum epochs.
        batch_size: Images per batch.
        lr: Adam learning rate (None: the trainer's default for ``init``).
        temperature: NT-Xent temperature.
        seed: Random seed.
        device: Torch device (None: CUDA when present).
        include_test: Also train on the fixed test split.
        crop_data_bar: Train on the micrograph proper.
        max_images: Use at most this many images.
        use_when_done: Make the trained encoder the library's encoder.
    """

    encoder_name: str = "micrograph-vit"
    init: str = "scratch"
    epochs: int = 50
    batch_size: int = 48
    lr: float | None = None
    temperature: float = 0.1
    seed: int = 0
    device: str | None = None
    include_test: bool = False
    crop_data_bar: bool = True
    max_images: int | None = None
    use_when_done: bool = False


def training_job(library: Path, request: TrainingRequest, token: CancelToken | None = None) -> Job[TrainResult]:
    """Train an encoder with SimCLR on the library's images; write it into the library's ``models/``.

    Opens a store of its own, so it may run in any thread.

    Raises:
        NmidError: When fewer than two images are fit for training.
    """
    from nmid_desktop.core.errors import NmidError
    from nmid_desktop.ml.encoders import set_library_encoder
    from nmid_desktop.ml.manifest import library_models_dir
    from nmid_desktop.ml.simclr import train_simclr

    with open_library(library, create=False) as store:
        sources = training_sources(store, include_test=request.include_test, crop_data_bar=request.crop_data_bar,
                                   max_images=request.max_images)
        if len(sources) < 2:
            raise NmidError(f"the library has {len(sources)} images fit for training; import some first")
        result = yield from train_simclr(
            list(sources), out_dir=library_models_dir(store.root), encoder_name=request.encoder_name,
            init=request.init, epochs=request.epochs, batch_size=request.batch_size, lr=request.lr,
            temperature=request.temperature, seed=request.seed, device=request.device, library=store.root,
            token=token,
        )
        if request.use_when_done:
            set_library_encoder(store, result.name)
    return result
