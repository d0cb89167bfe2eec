"""``nmid train``: which images it trains on, what it prints and writes, ``--use``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nmid_desktop.commands import train as train_command
from nmid_desktop.core.demo import make_demo_image
from nmid_desktop.core.importer import import_files
from nmid_desktop.core.store import open_library
from nmid_desktop.ml.encoders import load_encoder, resolve_encoder_name
from nmid_desktop.workspace.training import training_sources


def _drain(job):
    try:
        while True:
            next(job)
    except StopIteration as stop:
        return stop.value


@pytest.fixture()
def library(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    paths = []
    for i in range(12):
        image, _ = make_demo_image(("particles", "nanowires")[i % 2], np.random.default_rng(i), size=96)
        paths.append(folder / f"d{i}.png")
        Image.fromarray(image).save(paths[-1])
    root = tmp_path / "lib"
    store = open_library(root)
    _drain(import_files(store, paths, label="demo", copy=False))
    store.close()
    return root


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmid")
    train_command.register(parser.add_subparsers(dest="command"))
    return parser


def test_training_sources_leave_out_rejected_synthetic_and_test(library: Path) -> None:
    store = open_library(library, create=False)
    try:
        ids = [r.id for r in store.iter_images()]
        store.set_review(ids[0], "rejected")
        store.set_split({ids[1]: "test", ids[2]: "train"})
        synthetic_id, _ = store.add_image(
            store.get_image(ids[3]).path, sha256="f" * 64, page=0, n_pages=1, width=96, height=96,
            dtype="uint8", copy=False, synthetic=True, source_image_id=ids[3],
        )
        paths = {str(p) for p, _, _ in training_sources(store)}
        assert str(store.get_image(ids[0]).path) not in paths and str(store.get_image(ids[1]).path) not in paths
        assert len(training_sources(store)) == 10  # 12 - rejected - test; pending synthetic out
        store.set_label(synthetic_id, "demo", source="expert")  # an expert accepts it
        assert len(training_sources(store)) == 11
        assert len(training_sources(store, include_test=True)) == 12
    finally:
        store.close()


def test_nmid_train_writes_and_selects_the_encoder(library: Path, capsys: pytest.CaptureFixture) -> None:
    args = _parser().parse_args(
        ["train", "--library", str(library), "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--use"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "training micrograph-vit (scratch) on 12 images" in out
    assert out.count("epoch ") >= 2 and "loss" in out and "val" in out
    assert (library / "models" / "micrograph-vit.json").is_file()
    encoder = load_encoder("micrograph-vit", library=library, device="cpu")
    assert encoder.key in out
    # The trained encoder's ONNX graph lies beside its weights, ready for the torch-free engine.
    from nmid_desktop.inference.loader import load_encoder as load_on_engine

    assert f"{library / 'models' / 'micrograph-vit.onnx'} (ONNX graph" in out
    on_ort = load_on_engine("micrograph-vit", library=library, engine="onnxruntime")
    assert on_ort.key == encoder.key and on_ort.graph.origin == "beside manifest"
    store = open_library(library, create=False)
    try:
        assert resolve_encoder_name(store) == "micrograph-vit"
    finally:
        store.close()


def test_nmid_train_needs_a_library(tmp_path: Path) -> None:
    from nmid_desktop.core.errors import LibraryError

    args = _parser().parse_args(["train", "--library", str(tmp_path / "none"), "--epochs", "1"])
    with pytest.raises(LibraryError):
        args.func(args)
