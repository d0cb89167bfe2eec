"""Encoders: a manifest plus a torch module that turns grey micrographs into unit vectors.

``load_encoder(name)`` finds the manifest (a library's own ``models/`` first, then the
repository's), checks the weights' sha256, builds the network and returns an
:class:`Encoder`. Its ``key`` (name and weights hash) is what embeddings are cached
under, so retrained weights never mix with old embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmid_desktop.core.jobs import ensure_worker_thread
from nmid_desktop.inference.loader import (  # torch-free; kept importable from here
    DEFAULT_ENCODER,
    LIBRARY_ENCODER_META,
    resolve_encoder_name,
    set_library_encoder,
)
from nmid_desktop.inference.onnx_encoder import encoder_key
from nmid_desktop.inference.preprocess import as_grey_uint8, resize_square
from nmid_desktop.ml.device import pick_device
from nmid_desktop.ml.manifest import (
    EncoderManifest,
    ManifestError,
    library_models_dir,
    load_manifest,
    verify_weights,
)

__all__ = [
    "DEFAULT_ENCODER", "LIBRARY_ENCODER_META", "Encoder", "as_grey_uint8", "build_network", "load_encoder",
    "normalise_batch", "normalisation_tensors", "resize_square", "resolve_encoder_name", "set_library_encoder",
]


def build_network(manifest: EncoderManifest, *, load_weights: bool = True) -> nn.Module:
    """The feature network of a manifest: ``(B, C, S, S)`` normalised -> ``(B, D)``.

    Args:
        manifest: The encoder description.
        load_weights: Load (and first verify) the manifest's weights; False gives a
            randomly initialised network (training from scratch, tests).

    Raises:
        ManifestError: If weights are requested but missing, corrupt or do not fit.
    """
    path = verify_weights(manifest) if load_weights else None
    if manifest.architecture == "micrograph-vit":
        from nmid_desktop.ml.vit import MicrographViT, ViTConfig

        overrides = {"image_size": manifest.input_size, "in_channels": manifest.channels}
        cfg = ViTConfig.from_dict({**manifest.config, **overrides})
        net: nn.Module = MicrographViT(cfg)
        if path is not None:
            _load_native(net, path, manifest)
    elif manifest.architecture == "tf_efficientnet_lite0":
        from nmid_desktop.ml.efficientnet import EfficientNetFeatures, build_efficientnet_lite0, load_imagenet_lite0

        if path is not None and manifest.weights_layout == "efficientnet_pytorch":
            net = EfficientNetFeatures(load_imagenet_lite0(path))
        else:
            # Our own (fine-tuned) weights carry no ImageNet classifier.
            net = EfficientNetFeatures(build_efficientnet_lite0(num_classes=0))
            if path is not None:
                _load_native(net, path, manifest)
    else:  # manifest validation already restricts this; kept for new architectures
        raise ManifestError(f"encoder {manifest.name!r}: no builder for architecture {manifest.architecture!r}")
    if getattr(net, "embedding_dim", manifest.embedding_dim) != manifest.embedding_dim:
        raise ManifestError(
            f"encoder {manifest.name!r}: network gives {net.embedding_dim}-d features, "
            f"manifest says {manifest.embedding_dim}"
        )
    return net


def _load_native(net: nn.Module, path: Path, manifest: EncoderManifest) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ManifestError(
            f"encoder {manifest.name!r}: weights {path.name} do not fit the network ({first})"
        ) from None


def _for_inference(network: nn.Module) -> nn.Module:
    """Swap in a faster eval-only equivalent where one exists (BatchNorm folded into convs)."""
    from nmid_desktop.ml.efficientnet import EfficientNetFeatures, inference_copy

    if isinstance(network, EfficientNetFeatures):
        return EfficientNetFeatures(inference_copy(network.model))
    return network


def normalisation_tensors(manifest: EncoderManifest, device: str) -> tuple[Tensor, Tensor]:
    """The manifest's mean and std as ``(1, C, 1, 1)`` tensors on ``device``."""
    shape = (1, manifest.channels, 1, 1)
    mean = torch.tensor(manifest.mean, dtype=torch.float32, device=device).view(shape)
    std = torch.tensor(manifest.std, dtype=torch.float32, device=device).view(shape)
    return mean, std


def normalise_batch(batch: Tensor | np.ndarray, mean: Tensor, std: Tensor, device: str) -> Tensor:
    """Scale grey uint8 images for a network.

    Shape: ``(B, S, S)`` uint8 -> ``(B, C, S, S)`` float32 on ``device``, where ``C`` is the
    channel count of ``mean``/``std`` (``(1, C, 1, 1)``); grey is replicated when ``C = 3``.
    """
    x = torch.as_tensor(batch).to(device, non_blocking=True).unsqueeze(1).float()  # (B, 1, S, S) in [0, 255]
    # (x / 255 - mean) / std as one fused pass that also broadcasts grey to C channels.
    return torch.addcmul(-mean / std, x, 1.0 / (255.0 * std))


class Encoder:
    """A loaded encoder: ``embed(images) -> (N, D)`` float32, L2-normalised.

    Attributes:
        name: Encoder name from the manifest.
        key: ``"<name>@<sha256[:12]>"``; the embedding-cache key, new whenever weights change.
        dim: Embedding length ``D``.
        device: Torch device string the network runs on.
        engine: ``"torch"`` (the ONNX Runtime encoder says ``"onnxruntime"``).
        runtime: One line for people: torch version, device, threads.
        input_size: Side ``S`` of the square network input.
        manifest: The manifest it was built from.
        network: The torch module (eval mode; for EfficientNet a copy with BatchNorm folded
            into the convolutions, agreeing to 1e-5).
        compute_batch: Most images per forward pass (larger batches are split).
        light: True for a network cheaper than decoding its input (the ViT, ~3 ms per
            image on one core, against ~35 ms for EfficientNet-Lite0).
    """

    def __init__(self, manifest: EncoderManifest, network: nn.Module, device: str = "cpu") -> None:
        self.manifest = manifest
        self.name = manifest.name
        self.key = encoder_key(manifest)
        self.dim = manifest.embedding_dim
        self.input_size = manifest.input_size
        self.device = device
        self.engine = "torch"
        self.runtime = f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads"
        self.network = _for_inference(network).to(device).eval()
        self._mean, self._std = normalisation_tensors(manifest, device)
        self.light = manifest.architecture == "micrograph-vit"
        # On a CPU a CNN's activations for 64 images (100 MB per layer) overflow the caches:
        # 4-16 at a time ran 1.5-3x faster than 64 on a 2-core machine.
        self.compute_batch = 256 if not device.startswith("cpu") else (64 if self.light else 8)
        # oneDNN's depthwise convolutions run 1.7x faster on channels-last tensors on a CPU.
        self._channels_last = not self.light
        if self._channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)

    def __repr__(self) -> str:
        return f"Encoder({self.key!r}, dim={self.dim}, device={self.device!r})"

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """One image to network size. Shape: ``(H, W)`` uint8 -> ``(S, S)`` uint8."""
        return resize_square(as_grey_uint8(image), self.input_size)

    def to_input(self, batch: Tensor | np.ndarray) -> Tensor:
        """Normalise a batch of resized images for the network.

        Shape: ``(B, S, S)`` uint8 -> ``(B, C, S, S)`` float32 on the device; grey is
        replicated to ``C = 3`` channels where the network wants RGB.
        """
        x = normalise_batch(batch, self._mean, self._std, self.device)
        return x.contiguous(memory_format=torch.channels_last) if self._channels_last else x

    def embed_prepared(self, batch: Tensor | np.ndarray) -> np.ndarray:
        """Embed images already resized by :meth:`preprocess`.

        Shape: ``(B, S, S)`` uint8 -> ``(B, D)`` float32, each row of unit length.
        """
        ensure_worker_thread("embedding")
        batch = torch.as_tensor(batch)
        out = np.empty((batch.shape[0], self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, batch.shape[0], self.compute_batch):
                features = self.network(self.to_input(batch[start : start + self.compute_batch]))  # (b, D)
                out[start : start + features.shape[0]] = F.normalize(features.float(), dim=1).cpu().numpy()
        return out

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Embed grey micrographs of any size (already cropped to the micrograph proper).

        Args:
            images: 2-D uint8 arrays.
            batch_size: Images per forward pass.

        Returns:
            ``(N, D)`` float32, L2-normalised rows, in input order.
        """
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            prepared = np.stack([self.preprocess(image) for image in chunk])
            out[start : start + len(chunk)] = self.embed_prepared(prepared)
        return out


def load_encoder(name: str | Path, *, library: Path | None = None, device: str | None = None) -> Encoder:
    """Load an encoder by name (or manifest path), verifying its weights' sha256.

    Args:
        name: Encoder name, e.g. ``efficientnet-lite0-imagenet``, or a manifest ``.json`` path;
            ``NAME+VIEWS`` (``+flip``, ``+flips``, ``+d4``) averages the embedding over flipped
            and rotated views (:mod:`nmid_desktop.ml.views`).
        library: A library folder; its ``models/`` (written by ``nmid train``) is searched
            first, so a library's trained ``micrograph-vit`` shadows the untrained one.
        device: ``None``/``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...

    Raises:
        ManifestError: Unknown name, untrained architecture, missing or corrupt weights.
        ConfigError: A device this machine lacks.
    """
    from nmid_desktop.ml.views import ViewAveragedEncoder, split_views

    base, views = split_views(str(name)) if not str(name).endswith(".json") else (name, "")
    extra = [library_models_dir(library)] if library is not None else []
    manifest = load_manifest(base, extra)
    resolved = pick_device(device)
    encoder = Encoder(manifest, build_network(manifest), resolved)
    return ViewAveragedEncoder(encoder, views) if views else encoder  # type: ignore[return-value]
