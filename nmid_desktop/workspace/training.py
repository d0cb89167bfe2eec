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


def training_unavailable() -> str | None:
    """Why training cannot run in this install (no PyTorch: the lab-PC bundle), or None when it can."""
    from nmid_desktop.core.capabilities import torch_available, torch_missing_message

    return None if torch_available() else torch_missing_message("Training an encoder")


def training_job(library: Path, request: TrainingRequest, token: CancelToken | None = None) -> Job[TrainResult]:
    """Train an encoder with SimCLR on the library's images; write it into the library's ``models/``.

    Opens a store of its own, so it may run in any thread.

    Raises:
        NmidError: When fewer than two images are fit for training.
        TorchMissing: In an install without PyTorch (the lab-PC bundle): names the full install.
    """
    from nmid_desktop.core.capabilities import require_torch
    from nmid_desktop.core.errors import NmidError
    from nmid_desktop.inference.loader import set_library_encoder
    from nmid_desktop.ml.manifest import library_models_dir

    require_torch("Training an encoder")  # before ml.simclr, which imports torch
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


@dataclass(frozen=True)
class EncoderComparison:
    """The current and a newly trained encoder, evaluated alike on the library's accepted labels.

    Attributes:
        current: The library's encoder now.
        current_top1: Its kNN top-1 accuracy (K=5, most similar demonstrations, k-fold).
        trained: The trained encoder.
        trained_top1: Its top-1 accuracy, measured the same way on the same folds.
        n_images: Accepted, non-synthetic labelled images evaluated.
        folds: Stratified folds.
    """

    current: str
    current_top1: float
    trained: str
    trained_top1: float
    n_images: int
    folds: int

    @property
    def better(self) -> bool:
        """Whether the trained encoder scored strictly higher."""
        return self.trained_top1 > self.current_top1

    def summary(self) -> str:
        """Both figures in one line."""
        return (
            f"kNN top-1 on {self.n_images} accepted labels ({self.folds}-fold): current {self.current} "
            f"{self.current_top1:.1%}, trained {self.trained} {self.trained_top1:.1%}"
        )


def compare_encoders_job(
    library: Path, trained: str, token: CancelToken | None = None, *, current: str | None = None, folds: int = 3
) -> Job[EncoderComparison]:
    """Evaluate the library's encoder and a trained one alike, so a worse one is never adopted blindly.

    Raises:
        LabelError: Fewer than two classes of accepted labels to evaluate on.
    """
    from nmid_desktop.core.errors import Cancelled
    from nmid_desktop.evaluation.runner import EvalOptions, evaluate
    from nmid_desktop.inference.loader import resolve_encoder_name

    with open_library(library, create=False) as store:
        current = current or resolve_encoder_name(store)
        options = EvalOptions(encoders=(current, trained), predictors=("knn",), strategies=("similarity",),
                              ks=(5,), split="kfold", folds=folds)
        job = evaluate(store, options)
        while True:
            if token is not None and token.cancelled:
                job.close()
                raise Cancelled()
            try:
                progress = next(job)
            except StopIteration as stop:
                result = stop.value
                break
            yield progress
    return EncoderComparison(
        current=current,
        current_top1=float(result.best(encoder=current).metrics.top1),
        trained=trained,
        trained_top1=float(result.best(encoder=trained).metrics.top1),
        n_images=int(result.n_images),
        folds=int(result.n_folds),
    )


def use_encoder(library: Path, name: str) -> str:
    """Make ``name`` the library's encoder (the previous one stays on offer in Settings); returns the previous."""
    from nmid_desktop.inference.loader import resolve_encoder_name, set_library_encoder

    with open_library(library, create=False) as store:
        previous = resolve_encoder_name(store)
        set_library_encoder(store, name)
    return previous
