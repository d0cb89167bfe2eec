"""What every encoder offers the rest of the code: the torch and ONNX Runtime encoders and their view averages.

A typed seam (no torch here): the classifier, the application layer and the embedding jobs see only
this, whichever engine runs the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class ImageEncoder(Protocol):
    """A loaded micrograph encoder.

    Attributes:
        name: The encoder's name, e.g. ``efficientnet-lite0-imagenet+d4``.
        key: The embedding-cache key (name, weights' sha256, view suffix): embeddings of two
            encoders with different keys never mix.
        dim: Embedding dimension D.
        input_size: Side of the square network input, in pixels.
        device: Where it runs (``cpu``, ``cuda:0``), for display.
        engine: ``torch`` or ``onnxruntime``.
        runtime: One line on the engine (version, provider, threads), for display.
    """

    name: str
    key: str
    dim: int
    input_size: int
    engine: str
    runtime: str

    @property
    def device(self) -> object:
        """Where it runs (a ``torch.device`` or ``cpu``); ``str()`` it for display."""
        ...

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint8 of any size -> ``(S, S)`` uint8, S = ``input_size``."""
        ...

    def embed_prepared(self, batch: np.ndarray) -> np.ndarray:
        """Shape: ``(B, S, S)`` uint8 -> ``(B, D)`` float32, L2-normalised rows."""
        ...

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Grey micrographs of any size -> ``(N, D)`` float32, L2-normalised rows, in input order."""
        ...
