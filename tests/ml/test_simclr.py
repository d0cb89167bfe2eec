"""SimCLR training job: progress, checkpoint + manifest, seeding, cancel and failure safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nmid_desktop.core.errors import Cancelled, NmidError
from nmid_desktop.core.jobs import CancelToken, Progress
from nmid_desktop.ml.encoders import load_encoder
from nmid_desktop.ml.manifest import file_sha256
from nmid_desktop.ml.simclr import TrainResult, train_simclr

torch.set_num_threads(1)  # one thread: robust on a CPU shared with other jobs

FAST = {"epochs": 2, "batch_size": 8, "val_fraction": 0.2, "device": "cpu", "num_workers": 0}


@pytest.fixture(scope="module")
def neu_images(neu_dir: Path) -> list[Path]:
    """20 NEU images, a few of every class."""
    folders = sorted(p for p in neu_dir.iterdir() if p.is_dir())
    return [f for folder in folders for f in sorted(folder.glob("*.jpg"))[:4]][:20]


def _run(job) -> tuple[list[Progress], TrainResult]:
    reports: list[Progress] = []
    try:
        while True:
            reports.append(next(job))
    except StopIteration as stop:
        return reports, stop.value


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_tiny_run_reports_progress_and_writes_encoder(neu_images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "models"
    reports, result = _run(train_simclr(neu_images, out_dir=out, **FAST))
    phases = [r.data["phase"] for r in reports]
    assert phases[0] == "load" and phases.count("epoch") == 2
    assert phases.count("batch") == 2 * 2  # 16 training images / batch 8, twice
    epochs = [r.data for r in reports if r.data["phase"] == "epoch"]
    for record in epochs:
        assert {"epoch", "train_loss", "val_loss", "lr", "seconds", "eta_s", "device"} <= set(record)
        assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
        assert record["lr"] == pytest.approx(1e-3) and record["device"] == "cpu"
    assert epochs[-1]["eta_s"] == 0
    assert (result.n_train, result.n_val, result.epochs_run, result.monitored) == (16, 4, 2, "val_loss")
    assert result.best_loss == min(e["val_loss"] for e in epochs)

    # Weights, manifest, and the ONNX graph with its record (for the torch-free engine).
    assert result.graph_path == out / "micrograph-vit.onnx"
    written = [result.manifest_path.name, result.weights_path.name, "micrograph-vit.onnx", "micrograph-vit.onnx.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(written)
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["name"] == "micrograph-vit" and manifest["sha256"] == file_sha256(result.weights_path)
    assert manifest["training"]["best_epoch"] == result.best_epoch
    encoder = load_encoder(str(result.manifest_path), device="cpu")
    assert encoder.key == result.key
    vectors = encoder.embed([np.zeros((64, 64), np.uint8), np.full((64, 64), 255, np.uint8)])
    assert vectors.shape == (2, 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_same_seed_same_weights(neu_images: list[Path], tmp_path: Path) -> None:
    args = {**FAST, "epochs": 1, "batch_size": 4, "val_fraction": 0.25}
    _, first = _run(train_simclr(neu_images[:8], out_dir=tmp_path / "a", seed=3, **args))
    _, second = _run(train_simclr(neu_images[:8], out_dir=tmp_path / "b", seed=3, **args))
    _, other = _run(train_simclr(neu_images[:8], out_dir=tmp_path / "c", seed=4, **args))
    # (torch.save stamps each file with a random serialization id, so compare tensors, not hashes)
    weights = [torch.load(r.weights_path, weights_only=True) for r in (first, second, other)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert first.history[0]["val_loss"] == second.history[0]["val_loss"]


def test_cancel_leaves_the_last_good_encoder(neu_images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "models"
    _, good = _run(train_simclr(neu_images[:12], out_dir=out, **{**FAST, "epochs": 1}))
    before = _snapshot(out)

    job = train_simclr(neu_images, out_dir=out, seed=9, **FAST)
    for progress in job:  # close the generator in the middle of the first epoch
        if progress.data["phase"] == "batch":
            job.close()
            break
    assert _snapshot(out) == before

    token = CancelToken()
    job = train_simclr(neu_images, out_dir=out, seed=9, token=token, **FAST)
    with pytest.raises(Cancelled):
        for progress in job:
            if progress.data["phase"] == "batch":
                token.cancel()
    assert _snapshot(out) == before
    assert load_encoder("micrograph-vit", library=tmp_path, device="cpu").key == good.key


def test_failed_run_leaves_the_last_good_encoder(neu_images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "models"
    _run(train_simclr(neu_images[:12], out_dir=out, **{**FAST, "epochs": 1}))
    before = _snapshot(out)

    def explode() -> np.ndarray:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        _run(train_simclr([*neu_images[:12], explode], out_dir=out, **FAST))
    assert _snapshot(out) == before


def test_unreadable_images_are_skipped_and_reported(neu_images: list[Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    _, result = _run(train_simclr([*neu_images[:10], junk], out_dir=tmp_path / "m", **{**FAST, "epochs": 1}))
    assert [source for source, _ in result.failed] == [str(junk)]
    assert result.n_train + result.n_val == 10


def test_plateau_halves_lr_and_stops_early(neu_images: list[Path], tmp_path: Path) -> None:
    # A learning rate this small freezes the weights, so the validation loss cannot improve.
    _, result = _run(train_simclr(
        neu_images[:8], out_dir=tmp_path / "m", lr=2e-7, patience_lr=0, early_stop_patience=2,
        **{**FAST, "epochs": 8, "batch_size": 4, "val_fraction": 0.25},
    ))
    assert result.stopped_early and result.epochs_run < 8
    lrs = [h["lr"] for h in result.history]
    assert lrs[-1] < lrs[0]


def test_bad_arguments_are_refused(neu_images: list[Path], tmp_path: Path) -> None:
    with pytest.raises(NmidError, match="batch size"):
        next(train_simclr(neu_images, out_dir=tmp_path, batch_size=1))
    with pytest.raises(NmidError, match="init"):
        next(train_simclr(neu_images, out_dir=tmp_path, init="magic"))
    with pytest.raises(NmidError, match="at least 2"):
        _run(train_simclr(neu_images[:1], out_dir=tmp_path, **FAST))


def test_imagenet_efficientnet_can_be_fine_tuned(neu_images: list[Path], tmp_path: Path) -> None:
    _, result = _run(train_simclr(
        neu_images[:4], out_dir=tmp_path / "m", encoder_name="efficientnet-lite0-imagenet", init="imagenet",
        **{**FAST, "epochs": 1, "batch_size": 2, "val_fraction": 0.0},
    ))
    assert result.name == "efficientnet-lite0-simclr" and result.monitored == "train_loss"
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["training"]["lr"] == pytest.approx(1e-4)  # fine-tuning default
    assert manifest["architecture"] == "tf_efficientnet_lite0" and manifest["embedding_dim"] == 1280
    encoder = load_encoder(str(result.manifest_path), device="cpu")
    vectors = encoder.embed([np.full((50, 60), 90, np.uint8)])
    assert vectors.shape == (1, 1280) and np.isfinite(vectors).all()
