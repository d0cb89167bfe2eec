"""On a shared library, a colleague's accepted label is a demonstration for my next query at once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from nmid_desktop.core.demo import generate_demo
from nmid_desktop.core.importer import import_folder
from nmid_desktop.core.jobs import run_job
from nmid_desktop.core.store import ImageFilter, open_library
from nmid_desktop.core.store.copy import copy_library
from nmid_desktop.predict.service import Classifier


@pytest.fixture(scope="module")
def encoder() -> Any:
    import torch

    torch.set_num_threads(2)
    from nmid_desktop.ml.encoders import load_encoder

    return load_encoder("efficientnet-lite0-imagenet", device="cpu")


def test_a_colleagues_label_is_my_next_demonstration_without_a_rebuild(
    pg_server: object, encoder: object, tmp_path: Path
) -> None:
    from nmid_desktop.ml.embed import embed_images

    run_job(generate_demo(tmp_path / "labelled", per_class=4, seed=1, size=96))
    run_job(generate_demo(tmp_path / "extra", per_class=1, seed=2, size=96))
    with open_library(tmp_path / "local") as local:
        run_job(import_folder(local, tmp_path / "labelled"))
        run_job(import_folder(local, tmp_path / "extra", layout="flat"))
        run_job(embed_images(local, encoder, num_workers=0))
        url = pg_server.create_database()  # type: ignore[attr-defined]
        with open_library(url, shared_folder=tmp_path / "shared") as shared:
            run_job(copy_library(local, shared))
    ann = open_library(url, shared_folder=tmp_path / "shared", user="ann")
    bob = open_library(url, shared_folder=tmp_path / "shared", user="bob")
    clf = Classifier(ann, encoder=encoder)
    try:
        run_job(clf.prepare())
        index = clf.index_file
        assert (tmp_path / "shared") not in index.parents and index.is_file()  # per PC, in the cache
        built = os.stat(index).st_mtime_ns
        new = bob.images(ImageFilter(unlabelled=True))[0].id
        vector = clf.embed_image(new)
        assert new not in [d.image_id for d in clf.similar(vector, 3)]
        bob.set_label(new, "fibres", source="expert")  # on bob's PC
        (first,) = clf.similar(vector, 1)  # ann's next query
        assert (first.image_id, first.label) == (new, "fibres")
        assert ann.get_image(new).label_actor == "bob"
        assert new in clf.searcher.buffer and os.stat(index).st_mtime_ns == built  # no rebuild
    finally:
        if clf.searcher is not None:
            clf.searcher.close()
        ann.close()
        bob.close()
