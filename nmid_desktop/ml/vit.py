"""The GDL-NMID micrograph encoder: a small Vision Transformer with local then global attention.

Architecture (after the GDL-NMID paper's micrograph encoder):

* input ``(B, C, 224, 224)``, grey (``C = 1``) normalised to [-1, 1];
* 32 x 32 patches -> a 7 x 7 grid of 49 tokens, linear patch embedding to ``dim = 128``,
  a learned CLS token and learned position embeddings -> ``(B, 50, 128)``;
* multi-head self-attention with 4 heads of key/query/value size 32 (4 x 32 = 128);
* stage 1, **local**: each patch attends only to the patches of its spatial
  neighbourhood on the 7 x 7 grid (``radius = 1``: the 3 x 3 block around it, itself
  included), written as an attention mask; the CLS token only attends to itself;
* stage 2, **global through the CLS token**: the CLS token attends to every patch and
  every patch attends to itself and the CLS token, so long-range information flows
  through CLS (a star topology like the global tokens of ETC/Longformer);
* the layer-normalised CLS output ``(B, 128)`` is the image's embedding.

Transformer blocks are pre-norm (LayerNorm -> attention -> residual, LayerNorm -> MLP ->
residual) as in ViT (Dosovitskiy et al. 2021, arXiv:2010.11929).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of :class:`MicrographViT` (stored in the manifest's ``config``)."""

    image_size: int = 224
    patch_size: int = 32
    in_channels: int = 1
    dim: int = 128
    heads: int = 4
    head_dim: int = 32
    local_depth: int = 2
    global_depth: int = 2
    mlp_ratio: float = 2.0
    radius: int = 1
    dropout: float = 0.0

    @property
    def grid(self) -> int:
        """Patches per side (7 for 224 / 32)."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ViTConfig:
        """Build from a manifest ``config`` object, ignoring unknown keys."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def local_attention_mask(grid: int, radius: int = 1) -> Tensor:
    """Stage-1 mask over ``1 + grid**2`` tokens (CLS first). True = may attend.

    Patch ``(r, c)`` attends to patch ``(r', c')`` iff ``|r - r'| <= radius`` and
    ``|c - c'| <= radius``. CLS attends only to itself and no patch attends to CLS.

    Shape: ``(T, T)`` bool with ``T = 1 + grid**2``.
    """
    rows = torch.arange(grid).repeat_interleave(grid)  # (P,)
    cols = torch.arange(grid).repeat(grid)  # (P,)
    near = ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)
    tokens = 1 + grid * grid
    mask = torch.zeros(tokens, tokens, dtype=torch.bool)
    mask[0, 0] = True
    mask[1:, 1:] = near
    return mask


def global_attention_mask(grid: int) -> Tensor:
    """Stage-2 mask: CLS attends to all tokens; each patch attends to itself and CLS.

    Shape: ``(T, T)`` bool with ``T = 1 + grid**2``.
    """
    tokens = 1 + grid * grid
    mask = torch.eye(tokens, dtype=torch.bool)
    mask[0, :] = True
    mask[:, 0] = True
    return mask


class MaskedAttention(nn.Module):
    """Multi-head self-attention restricted by a fixed boolean mask."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)
        self.dropout = dropout

    def forward(
        self, x: Tensor, mask: Tensor, return_weights: bool = False, queries: int | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend.

        Args:
            x: Tokens, shape ``(B, T, dim)``.
            mask: Bool ``(T, T)``, True where query row may attend to key column.
            return_weights: Also return the attention probabilities (slow path, for tests).
            queries: Only the first ``queries`` tokens ask (``Q``); default all (``Q = T``).

        Returns:
            ``(B, Q, dim)``, and with ``return_weights`` the weights ``(B, heads, Q, T)``.
        """
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, heads, T, head_dim)
        if queries is not None:
            q, mask = q[:, :, :queries], mask[:queries]  # (B, heads, Q, head_dim), (Q, T)
        if return_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        out = out.transpose(1, 2).reshape(b, q.shape[2], self.heads * self.head_dim)
        out = self.proj(out)
        return (out, weights) if return_weights else out


class Block(nn.Module):
    """Pre-norm transformer block with a fixed attention mask."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = MaskedAttention(cfg.dim, cfg.heads, cfg.head_dim, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, cfg.dim)
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Shape: ``(B, T, dim) -> (B, T, dim)``."""
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))

    def forward_cls(self, x: Tensor, mask: Tensor) -> Tensor:
        """The CLS token's output only (what the last block must compute).

        Shape: ``(B, T, dim) -> (B, 1, dim)``; equal to ``forward(x, mask)[:, :1]``.
        """
        cls = x[:, :1] + self.attn(self.norm1(x), mask, queries=1)
        return cls + self.mlp(self.norm2(cls))


class MicrographViT(nn.Module):
    """The paper's encoder. ``forward``: ``(B, C, 224, 224)`` in [-1, 1] -> ``(B, 128)``."""

    def __init__(self, cfg: ViTConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ViTConfig()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.embedding_dim = cfg.dim
        tokens = 1 + cfg.grid**2
        # A strided convolution is the linear patch embedding: (B, C, H, W) -> (B, dim, grid, grid).
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, cfg.dim))
        self.local_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.local_depth))
        self.global_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.global_depth))
        self.norm = nn.LayerNorm(cfg.dim)
        # Buffers move with .to(device) and are not trained; persistent=False keeps them
        # out of the state dict (they are a function of the config).
        self.register_buffer("local_mask", local_attention_mask(cfg.grid, cfg.radius), persistent=False)
        self.register_buffer("global_mask", global_attention_mask(cfg.grid), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def tokens(self, x: Tensor) -> Tensor:
        """Patch + CLS tokens with positions. Shape: ``(B, C, H, W) -> (B, 1 + grid**2, dim)``."""
        if x.shape[-2:] != (self.cfg.image_size, self.cfg.image_size):
            raise ValueError(f"expected {self.cfg.image_size} x {self.cfg.image_size} input, got {tuple(x.shape[-2:])}")
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, P, dim), row-major over the grid
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, dim)
        return torch.cat([cls, patches], dim=1) + self.pos_embed

    def forward_local(self, x: Tensor) -> Tensor:
        """Tokens after stage 1 only. Shape: ``(B, C, H, W) -> (B, T, dim)``."""
        t = self.tokens(x)
        for block in self.local_blocks:
            t = block(t, self.local_mask)
        return t

    def forward(self, x: Tensor) -> Tensor:
        """Embed images. Shape: ``(B, C, H, W) -> (B, dim)`` (layer-normalised CLS output)."""
        t = self.forward_local(x)
        if not self.global_blocks:
            return self.norm(t[:, 0])
        for block in self.global_blocks[:-1]:
            t = block(t, self.global_mask)
        # Patch outputs of the last block reach nothing, so only CLS is computed there
        # (a quarter of the work of the default 2 + 2 blocks).
        return self.norm(self.global_blocks[-1].forward_cls(t, self.global_mask)[:, 0])
