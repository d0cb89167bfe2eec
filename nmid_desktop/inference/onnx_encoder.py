"""An encoder on ONNX Runtime (CPU): the same interface and the same embeddings as the torch one.

Pre-processing is :mod:`nmid_desktop.inference.preprocess` (numpy/Pillow); the network is
the verified graph of :mod:`nmid_desktop.inference.graph`. No torch is imported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from nmid_desktop.core.jobs import ensure_worker_thread
from nmid_desktop.inference.graph import INPUT_NAME, GraphInfo
from nmid_desktop.inference.preprocess import as_grey_uint8, l2_normalise, normalise, resize_square
from nmid_desktop.ml.manifest import EncoderManifest
from nmid_desktop.ml.manifest import encoder_key as make_key

ENGINE = "onnxruntime"


def encoder_key(manifest: EncoderManifest) -> str:
    """``"<name>@<weights sha256[:12]>"``: the embedding-cache key, the same for every engine.

    Both engines give the same embeddings (cosine >= 0.9999, ``tests/ml``), so a cache
    filled by one stays valid for the other.
    """
    return make_key(manifest.name, manifest.sha256)


class OnnxEncoder:
    """A loaded encoder on ONNX Runtime: ``embed(images) -> (N, D)`` float32, L2-normalised.

    Attributes:
        name: Encoder name from the manifest.
        key: Embedding-cache key (:func:`encoder_key`).
        dim: Embedding length ``D``.
        input_size: Side ``S`` of the square network input.
        engine: ``"onnxruntime"``.
        device: ``"cpu"``.
        runtime: One line for people: version, execution provider, threads.
        graph: The verified graph it runs.
        manifest: The manifest it was built from.
        compute_batch: Most images per ``run`` (larger batches are split).
        light: True for the ViT (cheaper than decoding its input).

    Args:
        manifest: The encoder description.
        graph: A graph checked by :func:`nmid_desktop.inference.graph.ensure_graph`.
        threads: Intra-op threads (default: ``NMID_ORT_THREADS`` from the environment, else
            ONNX Runtime's, one per physical core).
    """

    def __init__(self, manifest: EncoderManifest, graph: GraphInfo, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.manifest = manifest
        self.name = manifest.name
        self.key = encoder_key(manifest)
        self.dim = manifest.embedding_dim
        self.input_size = manifest.input_size
        self.graph = graph
        self.engine = ENGINE
        self.device = "cpu"
        self.light = manifest.architecture == "micrograph-vit"
        # As on torch, a CNN's activations for many images overflow a CPU's caches.
        self.compute_batch = 64 if self.light else 8
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads wait without spinning, as torch's OpenMP threads do (ml/__init__.py): on a
        # 2-core machine with other busy processes one 8-image batch took 0.77-1.2 s instead
        # of 1.2-1.6 s with ONNX Runtime's default spinning.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is None and os.environ.get("NMID_ORT_THREADS"):
            threads = int(os.environ["NMID_ORT_THREADS"])
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(graph.path), options, providers=["CPUExecutionProvider"])
        shown = threads or "auto"
        self.runtime = f"onnxruntime {ort.__version__}, CPUExecutionProvider, {shown} threads"

    def __repr__(self) -> str:
        return f"OnnxEncoder({self.key!r}, dim={self.dim}, graph={str(self.graph.path)!r})"

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """One image to network size. Shape: ``(H, W)`` uint8 -> ``(S, S)`` uint8."""
        return resize_square(as_grey_uint8(image), self.input_size)

    def to_input(self, batch: np.ndarray) -> np.ndarray:
        """Shape: ``(B, S, S)`` uint8 -> ``(B, C, S, S)`` float32 normalised."""
        return normalise(np.asarray(batch), self.manifest.mean, self.manifest.std)

    def embed_prepared(self, batch: np.ndarray) -> np.ndarray:
        """Embed images already resized by :meth:`preprocess`.

        Shape: ``(B, S, S)`` uint8 -> ``(B, D)`` float32, each row of unit length.
        """
        ensure_worker_thread("embedding")
        x = np.asarray(batch)
        out = np.empty((x.shape[0], self.dim), dtype=np.float32)
        for start in range(0, x.shape[0], self.compute_batch):
            chunk = self.to_input(x[start : start + self.compute_batch])
            (features,) = self._session.run(None, {INPUT_NAME: chunk})  # (b, D)
            out[start : start + len(chunk)] = l2_normalise(features)
        return out

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Embed grey micrographs of any size (already cropped to the micrograph proper).

        Returns:
            ``(N, D)`` float32, L2-normalised rows, in input order.
        """
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            out[start : start + len(chunk)] = self.embed_prepared(np.stack([self.preprocess(im) for im in chunk]))
        return out
