"""Embedding jobs: cache per encoder key, data bar crop, failures, cancel, loose files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nmid_desktop.core.demo import make_demo_image
from nmid_desktop.core.importer import import_files
from nmid_desktop.core.jobs import Progress
from nmid_desktop.core.store import open_library
from nmid_desktop.ml.embed import embed_images, embed_paths
from nmid_desktop.ml.encoders import Encoder, build_network, load_encoder
from nmid_desktop.ml.manifest import load_manifest
from nmid_desktop.ml.simclr import write_encoder

torch.set_num_threads(1)  # one thread: robust on a CPU shared with other jobs


def _run(job) -> tuple[list[Progress], object]:
    reports = []
    try:
        while True:
            reports.append(next(job))
    except StopIteration as stop:
        return reports, stop.value


@pytest.fixture()
def encoder(tmp_path: Path) -> Encoder:
    base = load_manifest("micrograph-vit")
    torch.manual_seed(0)
    state = build_network(base, load_weights=False).state_dict()
    path, _, _ = write_encoder(state, base, "vit-t", tmp_path / "m", {"n_train": 0})
    return load_encoder(str(path), device="cpu")


@pytest.fixture()
def library(tmp_path: Path):
    """Six demo micrographs with data bars, imported (bar detection on) without copying."""
    folder = tmp_path / "files"
    folder.mkdir()
    paths = []
    for i in range(6):
        cls = ("particles", "porous", "fibres")[i % 3]
        image, _ = make_demo_image(cls, np.random.default_rng(i), size=128, with_bar=True)
        path = folder / f"img{i}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    store = open_library(tmp_path / "lib")
    _run(import_files(store, paths, copy=False))
    yield store, paths
    store.close()


def test_second_call_embeds_nothing(library, encoder: Encoder) -> None:
    store, _ = library
    ids = [r.id for r in store.iter_images()]
    reports, (got_ids, vectors) = _run(embed_images(store, encoder, batch_size=4, num_workers=0))
    assert sum(r.data["embedded"] for r in reports) == 6
    assert list(got_ids) == ids and vectors.shape == (6, 128)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    cached_ids, _ = store.get_embeddings(encoder.key)
    assert sorted(cached_ids.tolist()) == sorted(ids)

    reports, again = _run(embed_images(store, encoder, batch_size=4))
    assert reports == []  # nothing left to embed
    assert np.array_equal(again.vectors, vectors) and again.failed == []
    # asking for a subset, in another order, gives exactly those rows
    _, (sub_ids, sub_vecs) = _run(embed_images(store, encoder, [ids[3], ids[0]]))
    assert list(sub_ids) == [ids[3], ids[0]] and np.array_equal(sub_vecs, vectors[[3, 0]])


def test_data_bar_is_cropped_before_encoding(library, encoder: Encoder) -> None:
    store, _ = library
    record = store.images()[0]
    assert record.crop_box is not None and record.crop_box[3] < record.height  # a bar was found
    _, (_, cropped) = _run(embed_images(store, encoder, [record.id], crop=True, num_workers=0))
    store.drop_embeddings(encoder.key)
    _, (_, full) = _run(embed_images(store, encoder, [record.id], crop=False, num_workers=0))
    x0, y0, x1, y1 = record.crop_box
    view = np.asarray(Image.open(record.path).convert("L"))
    assert np.allclose(cropped, encoder.embed([view[y0:y1, x0:x1]]), atol=1e-5)
    assert np.allclose(full, encoder.embed([view]), atol=1e-5)
    assert not np.allclose(cropped, full, atol=1e-3)


def test_unreadable_image_is_reported_not_fatal(library, encoder: Encoder) -> None:
    store, paths = library
    paths[2].write_bytes(b"this file got overwritten")
    bad_id = next(r.id for r in store.iter_images() if Path(r.path) == paths[2])
    reports, result = _run(embed_images(store, encoder, batch_size=4, num_workers=0))
    assert [i for i, _ in result.failed] == [bad_id]
    assert len(result.ids) == 5 and bad_id not in result.ids.tolist()
    assert any(r.data["failed"] for r in reports)
    _, result = _run(embed_images(store, encoder, [999_999], num_workers=0))
    assert result.failed == [(999_999, "no such image in the library")]


def test_cancel_keeps_finished_batches(library, encoder: Encoder) -> None:
    store, _ = library
    job = embed_images(store, encoder, batch_size=2, num_workers=0)
    next(job)
    job.close()
    cached_ids, _ = store.get_embeddings(encoder.key)
    assert len(cached_ids) == 2
    reports, result = _run(embed_images(store, encoder, batch_size=2, num_workers=0))
    assert sum(r.data["embedded"] for r in reports) == 4 and len(result.ids) == 6


def test_workers_give_the_same_vectors(library, encoder: Encoder) -> None:
    store, _ = library
    _, (_, serial) = _run(embed_images(store, encoder, batch_size=2, num_workers=0))
    store.drop_embeddings(encoder.key)
    _, (_, parallel) = _run(embed_images(store, encoder, batch_size=2, num_workers=1))
    assert np.allclose(serial, parallel, atol=1e-6)


def test_embed_paths_crops_and_marks_failures(library, encoder: Encoder, tmp_path: Path) -> None:
    store, paths = library
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00garbage")
    files = [paths[0], junk, paths[1]]
    reports, vectors = _run(embed_paths(encoder, files, batch_size=2, num_workers=0))
    assert vectors.shape == (3, 128)
    assert np.isnan(vectors[1]).all() and not np.isnan(vectors[[0, 2]]).any()
    assert [p for p, _ in reports[-1].data["all_failed"]] == [str(junk)]
    _, (ids, library_vectors) = _run(embed_images(store, encoder, num_workers=0))
    by_path = {Path(r.path): n for n, r in enumerate(store.images())}
    assert np.allclose(vectors[0], library_vectors[by_path[paths[0]]], atol=1e-5)  # same bar crop
