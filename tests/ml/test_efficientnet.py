"""EfficientNet-Lite0: the efficientnet_pytorch -> timm key mapping and the loaded ImageNet network.

There are no ImageNet images here, so the loaded network is checked three other ways:
its logits are finite and far from uniform; the activations entering each BatchNorm
match the running statistics stored in the checkpoint (only the right mapping, padding
and normalisation make a real image's statistics line up); and its pooled features
tell NEU steel-defect classes apart by 1-NN far better than the same net untrained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nmid_desktop.ml.efficientnet import (
    STAGE_SIZES,
    EfficientNetFeatures,
    WeightMappingError,
    block_position,
    build_efficientnet_lite0,
    convert_state_dict,
    load_imagenet_lite0,
    map_efficientnet_pytorch_keys,
)
from nmid_desktop.ml.encoders import load_encoder
from nmid_desktop.ml.manifest import load_manifest

torch.set_num_threads(1)  # one thread: robust on a CPU shared with other jobs


@pytest.fixture(scope="module")
def source_state() -> dict[str, torch.Tensor]:
    path = load_manifest("efficientnet-lite0-imagenet").weights_file
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def neu_sample(neu_dir: Path) -> tuple[torch.Tensor, np.ndarray]:
    """8 images of each NEU class, resized and normalised as the encoder does: (48, 3, 224, 224)."""
    images, labels = [], []
    for label, folder in enumerate(sorted(p for p in neu_dir.iterdir() if p.is_dir())):
        for file in sorted(folder.glob("*.jpg"))[:8]:
            grey = Image.open(file).convert("L").resize((224, 224), Image.Resampling.BILINEAR)
            images.append(np.asarray(grey))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).float().div(255.0).sub(127 / 255).div(128 / 255)
    return x[:, None].expand(-1, 3, -1, -1).contiguous(), np.array(labels)


def test_every_source_tensor_maps_once_with_matching_shape(source_state) -> None:
    mapping = map_efficientnet_pytorch_keys(source_state.keys())
    assert set(mapping) == set(source_state)
    assert len(set(mapping.values())) == len(mapping) == 296
    model = build_efficientnet_lite0()
    converted = convert_state_dict(source_state, model)
    target = model.state_dict()
    assert set(converted) == set(target)
    for src, dst in mapping.items():
        assert converted[dst].shape == target[dst].shape == source_state[src].shape


def test_mapping_follows_the_source_key_names(source_state) -> None:
    mapping = map_efficientnet_pytorch_keys(source_state.keys())
    assert mapping["_conv_stem.weight"] == "conv_stem.weight"
    assert mapping["_bn0.running_var"] == "bn1.running_var"
    # block 0 has no expansion: depthwise -> bn1 -> project -> bn2
    assert mapping["_blocks.0._depthwise_conv.weight"] == "blocks.0.0.conv_dw.weight"
    assert mapping["_blocks.0._project_conv.weight"] == "blocks.0.0.conv_pw.weight"
    assert mapping["_blocks.0._bn2.bias"] == "blocks.0.0.bn2.bias"
    # expanding blocks: _bn0/_bn1/_bn2 follow expand/depthwise/project
    assert mapping["_blocks.1._expand_conv.weight"] == "blocks.1.0.conv_pw.weight"
    assert mapping["_blocks.1._bn0.weight"] == "blocks.1.0.bn1.weight"
    assert mapping["_blocks.1._bn1.weight"] == "blocks.1.0.bn2.weight"
    assert mapping["_blocks.1._bn2.weight"] == "blocks.1.0.bn3.weight"
    assert mapping["_blocks.9._depthwise_conv.weight"] == "blocks.4.1.conv_dw.weight"
    assert mapping["_blocks.15._project_conv.weight"] == "blocks.6.0.conv_pwl.weight"
    assert mapping["_conv_head.weight"] == "conv_head.weight"
    assert mapping["_bn1.running_mean"] == "bn2.running_mean"
    assert mapping["_fc.weight"] == "classifier.weight"
    assert [block_position(i) for i in (0, 1, 2, 3, 5, 8, 11, 15)] == [
        (0, 0), (1, 0), (1, 1), (2, 0), (3, 0), (4, 0), (5, 0), (6, 0)]
    assert sum(STAGE_SIZES) == 16


def test_bad_weights_are_refused(source_state) -> None:
    with pytest.raises(WeightMappingError):
        block_position(16)
    with pytest.raises(WeightMappingError, match="fits no part"):
        map_efficientnet_pytorch_keys(["_mystery.weight"])
    broken = dict(source_state)
    broken["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)  # the real one is 5 x 5
    with pytest.raises(WeightMappingError, match="does not fit"):
        convert_state_dict(broken, build_efficientnet_lite0())
    missing = {k: v for k, v in source_state.items() if not k.startswith("_bn1.")}
    with pytest.raises(WeightMappingError, match="unset"):
        convert_state_dict(missing, build_efficientnet_lite0())


class _BatchNormProbe:
    """Records, per BatchNorm, |batch mean - running mean| / spread of the running means."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.errors: list[float] = []
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        self.handles = [m.register_forward_hook(self._hook) for m in norms]

    def _hook(self, module, inputs, _output) -> None:
        mean = inputs[0].mean(dim=(0, 2, 3))
        spread = module.running_mean.std() + 1e-6
        self.errors.append(float((mean - module.running_mean).abs().mean() / spread))

    def median(self) -> float:
        for handle in self.handles:
            handle.remove()
        return float(np.median(self.errors))


def _one_nn_accuracy(features: torch.Tensor, labels: np.ndarray) -> float:
    f = torch.nn.functional.normalize(features, dim=1)
    sim = f @ f.T
    sim.fill_diagonal_(-2.0)
    return float((labels[sim.argmax(1).numpy()] == labels).mean())


def test_loaded_network_is_the_imagenet_one(source_state, neu_sample) -> None:
    x, labels = neu_sample
    model = load_imagenet_lite0(load_manifest("efficientnet-lite0-imagenet").weights_file)
    probe = _BatchNormProbe(model)
    with torch.no_grad():
        features = EfficientNetFeatures(model)(x[:16])  # (16, 1280) pooled, pre-classifier
        logits = model.classifier(features)
    good = probe.median()
    assert features.shape == (16, 1280)
    assert logits.shape == (16, 1000) and torch.isfinite(logits).all()
    assert logits.softmax(1).max(1).values.mean() > 10 / 1000  # confident far beyond uniform

    # The same weights with expand/depthwise BatchNorms swapped (same shapes, so only
    # statistics can tell) must look clearly wrong: the check can fail.
    swapped = build_efficientnet_lite0()
    state = convert_state_dict(source_state, swapped)
    state = {
        (k.replace(".bn1.", ".bnX.").replace(".bn2.", ".bn1.").replace(".bnX.", ".bn2.")
         if k.startswith("blocks.") and not k.startswith("blocks.0.") else k): v
        for k, v in state.items()
    }
    swapped.load_state_dict(state)
    probe = _BatchNormProbe(swapped.eval())
    with torch.no_grad():
        swapped(x[:16])
    bad = probe.median()
    assert good < 0.6 and bad > 2 * good, (good, bad)

    # The encoder (BatchNorm folded into the convolutions) gives the same features.
    encoder = load_encoder("efficientnet-lite0-imagenet", device="cpu")
    with torch.no_grad():
        folded = torch.cat([encoder.network(part.contiguous(memory_format=torch.channels_last)) for part in x.split(8)])
    assert torch.allclose(folded[:16], features, atol=1e-4, rtol=1e-4)
    accuracy = _one_nn_accuracy(folded, labels)
    torch.manual_seed(0)
    with torch.no_grad():
        random_net = EfficientNetFeatures(build_efficientnet_lite0().eval())
        random_acc = _one_nn_accuracy(torch.cat([random_net(part) for part in x.split(8)]), labels)
    assert accuracy >= 0.9, accuracy  # 6 classes: chance is 0.17
    assert accuracy > random_acc + 0.1, (accuracy, random_acc)
