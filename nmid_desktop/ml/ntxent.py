"""NT-Xent, the normalised temperature-scaled cross-entropy loss of SimCLR.

- [0] SimCLR: Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive
  Learning of Visual Representations", ICML 2020, https://arxiv.org/abs/2002.05709

For a batch of ``n`` images with two views each (``2n`` embeddings ``z``, cosine
similarity ``s``), the loss of anchor ``i`` with positive ``j`` (its other view) is::

    l(i, j) = -log( exp(s_ij / t) / sum_{k != i} exp(s_ik / t) )

averaged over all ``2n`` anchors. The denominator has ``2n - 1`` terms (the positive
and ``2n - 2`` negatives). When all ``2n`` embeddings are equal, every term is the
same and the loss is ``log(2n - 1)`` for any temperature. When the two views agree
and all other samples are orthogonal it is ``log(1 + (2n - 2) exp(-1 / t))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent over a batch of positive pairs.

    Args:
        z1: Projections of the first views, shape ``(B, D)``.
        z2: Projections of the second views, shape ``(B, D)``; row ``b`` pairs with ``z1[b]``.
        temperature: Softmax temperature ``t > 0``.

    Returns:
        Scalar loss, the mean over the ``2B`` anchors.

    Raises:
        ValueError: If the shapes differ, ``B < 1`` or the temperature is not positive.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (B, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 1:
        raise ValueError("NT-Xent needs at least one pair")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)  # (2B, D)
    logits = (z @ z.T) / temperature  # (2B, 2B) cosine similarity / t
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # an anchor is never its own candidate
    # Anchor b (first views) has its positive at b + n, anchor b + n at b.
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)
