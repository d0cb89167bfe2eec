"""``nmid embed``'s use case: resumable library embedding on this process and on a local Ray."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nmid_desktop.cli import main
from nmid_desktop.core.demo import make_demo_image
from nmid_desktop.core.errors import ConfigError
from nmid_desktop.core.importer import import_files
from nmid_desktop.core.jobs import run_job
from nmid_desktop.core.store import open_library
from nmid_desktop.ml.encoders import build_network, load_encoder
from nmid_desktop.ml.manifest import load_manifest
from nmid_desktop.ml.simclr import write_encoder
from nmid_desktop.workspace.embedding import CLUSTER_EXTRA_HINT, embed_library

torch.set_num_threads(1)
N_IMAGES = 12


@pytest.fixture()
def encoder_path(tmp_path: Path) -> Path:
    """A small random ViT written as a manifest (fast to load in every Ray actor)."""
    base = load_manifest("micrograph-vit")
    torch.manual_seed(0)
    path, _, _ = write_encoder(build_network(base, load_weights=False).state_dict(), base, "vit-t", tmp_path / "m", {"n_train": 0})
    return Path(path)


@pytest.fixture()
def store(tmp_path: Path):
    """Demo micrographs with data bars (crop boxes stored), plus one whose file is then truncated."""
    folder = tmp_path / "files"
    folder.mkdir()
    paths = []
    for i in range(N_IMAGES):
        image, _ = make_demo_image(("particles", "porous", "fibres")[i % 3], np.random.default_rng(i), size=128, with_bar=True)
        paths.append(folder / f"img{i}.png")
        Image.fromarray(image).save(paths[-1])
    lib = open_library(tmp_path / "lib")
    run_job(import_files(lib, paths, copy=False))
    paths[-1].write_bytes(b"not a png any more")
    yield lib
    lib.close()


def test_local_engine_is_resumable_and_reports_failures(store, encoder_path: Path) -> None:
    encoder = load_encoder(str(encoder_path), device="cpu")
    job = embed_library(store, str(encoder_path), encoder=encoder, batch_size=4)
    next(job)  # the plan
    first = next(job)  # one batch stored
    job.close()  # cancelled here: that batch stays stored
    assert first.data["embedded"] == 4
    assert len(store.embedded_ids(encoder.key)) == 4

    report = run_job(embed_library(store, str(encoder_path), encoder=encoder, batch_size=4))
    assert (report.total, report.skipped, report.embedded) == (N_IMAGES, 4, N_IMAGES - 5)
    assert len(report.failed) == 1 and report.failed[0][1]
    ids, vectors = store.get_embeddings(encoder.key)
    assert len(ids) == N_IMAGES - 1 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)

    again = run_job(embed_library(store, str(encoder_path), encoder=encoder))
    assert again.embedded == 0 and again.skipped == N_IMAGES - 1


def test_unknown_engine_is_a_clear_error(store, encoder_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown embedding engine"):
        run_job(embed_library(store, str(encoder_path), engine="spark"))


def test_ray_engine_without_ray_names_the_extra(store, encoder_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra sees
    with pytest.raises(ConfigError, match=r"nmid-desktop\[cluster\]"):
        run_job(embed_library(store, str(encoder_path), engine="ray"))
    code = main(["embed", "--library", str(store.root), "--engine", "ray", "--encoder", str(encoder_path)])
    assert code == 1 and CLUSTER_EXTRA_HINT in capsys.readouterr().err


def _ray_or_skip() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI=true but Ray is missing: install the cluster extra ({CLUSTER_EXTRA_HINT})")
        pytest.skip(f"Ray is not installed ({CLUSTER_EXTRA_HINT})")


def test_ray_engine_matches_the_local_path(store, encoder_path: Path) -> None:
    _ray_or_skip()
    encoder = load_encoder(str(encoder_path), device="cpu")
    local = run_job(embed_library(store, str(encoder_path), encoder=encoder, batch_size=4))
    local_ids, local_vecs = store.get_embeddings(encoder.key)
    store.drop_embeddings(encoder.key)

    remote = run_job(embed_library(store, str(encoder_path), engine="ray", num_cpus=2, encoder=encoder, batch_size=4))
    ids, vecs = store.get_embeddings(encoder.key)
    assert remote.embedded == local.embedded == N_IMAGES - 1
    assert [i for i, _ in remote.failed] == [i for i, _ in local.failed]
    assert np.array_equal(ids, local_ids)
    np.testing.assert_allclose(vecs, local_vecs, atol=1e-5)
