"""Encoder.embed: unit-length, deterministic, any input size; devices and the library's encoder choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nmid_desktop.core.errors import ConfigError
from nmid_desktop.core.store import open_library
from nmid_desktop.ml.device import pick_device
from nmid_desktop.ml.encoders import (
    DEFAULT_ENCODER,
    Encoder,
    build_network,
    load_encoder,
    resolve_encoder_name,
    set_library_encoder,
)
from nmid_desktop.ml.manifest import ManifestError, load_manifest
from nmid_desktop.ml.simclr import write_encoder

torch.set_num_threads(1)  # one thread: robust on a CPU shared with other jobs


@pytest.fixture()
def vit_encoder(tmp_path: Path) -> Encoder:
    """A micrograph-vit with seeded random weights, written and loaded like a trained one."""
    base = load_manifest("micrograph-vit")
    torch.manual_seed(0)
    state = build_network(base, load_weights=False).state_dict()
    manifest_path, _, _ = write_encoder(state, base, "vit-test", tmp_path / "models", {"n_train": 0})
    return load_encoder(str(manifest_path), device="cpu")


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (300, 400), dtype=np.uint8),
        rng.integers(0, 256, (224, 224), dtype=np.uint8),
        rng.integers(0, 256, (31, 57), dtype=np.uint8),
        np.full((100, 100), 200, dtype=np.uint8),
    ]


def test_embed_is_unit_length_and_deterministic(vit_encoder: Encoder) -> None:
    images = _images()
    first = vit_encoder.embed(images)
    assert first.shape == (4, 128) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, vit_encoder.embed(images))
    # a batch gives each image the same vector as embedding it alone
    alone = np.concatenate([vit_encoder.embed([image]) for image in images])
    assert np.allclose(first, alone, atol=1e-5)
    # different images, different vectors
    assert not np.allclose(first[0], first[1])


def test_key_names_the_weights(vit_encoder: Encoder, tmp_path: Path) -> None:
    assert vit_encoder.key == f"vit-test@{vit_encoder.manifest.sha256[:12]}"
    assert vit_encoder.dim == 128 and vit_encoder.device == "cpu"
    base = load_manifest("micrograph-vit")
    torch.manual_seed(1)
    state = build_network(base, load_weights=False).state_dict()
    path, _, _ = write_encoder(state, base, "vit-test", tmp_path / "models", {"n_train": 0})
    assert load_encoder(str(path), device="cpu").key != vit_encoder.key


def test_bad_input_is_refused(vit_encoder: Encoder) -> None:
    with pytest.raises(ValueError, match="uint8"):
        vit_encoder.embed([np.zeros((10, 10), dtype=np.float32)])
    with pytest.raises(ValueError):
        vit_encoder.embed([np.zeros((10, 10, 3), dtype=np.uint8)])


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    base = load_manifest("micrograph-vit")
    state = build_network(base, load_weights=False).state_dict()
    state.pop("cls_token")
    path, _, _ = write_encoder(state, base, "broken", tmp_path, {"n_train": 0})
    with pytest.raises(ManifestError, match="do not fit"):
        load_encoder(str(path), device="cpu")


def test_pick_device() -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        pick_device("tpu")
    if torch.cuda.is_available():
        assert pick_device("cuda") == "cuda"
    else:
        with pytest.raises(ConfigError, match="CUDA is not available"):
            pick_device("cuda")


def test_library_encoder_choice(tmp_path: Path) -> None:
    store = open_library(tmp_path / "lib")
    try:
        assert resolve_encoder_name(store) == DEFAULT_ENCODER
        set_library_encoder(store, "micrograph-vit")
        assert resolve_encoder_name(store) == "micrograph-vit"
        with pytest.raises(ManifestError):
            set_library_encoder(store, "nonexistent")
    finally:
        store.close()


def test_view_suffix_loads_a_view_averaged_encoder_with_its_own_cache_key() -> None:
    import pytest as _pytest

    from nmid_desktop.core.errors import ConfigError
    from nmid_desktop.ml.encoders import load_encoder
    from nmid_desktop.ml.views import ViewAveragedEncoder

    encoder = load_encoder(DEFAULT_ENCODER, device="cpu")
    assert isinstance(encoder, ViewAveragedEncoder)
    assert encoder.key.endswith("+d4") and encoder.key != encoder.base.key
    with _pytest.raises(ConfigError, match="view set"):
        load_encoder("efficientnet-lite0-imagenet+spin", device="cpu")
