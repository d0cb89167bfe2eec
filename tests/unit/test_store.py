"""The store contract: every backend (SQLite, PostgreSQL) passes these same tests.

Images, taxonomy, labels with history and undo/redo, embeddings, predictions,
splits. The ``library`` fixture (tests/unit/conftest.py) runs each test once per
backend; what only one backend has lives in test_store_sqlite.py / test_store_pg.py.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
from library_fixture import Library

from nmid_desktop.core.errors import LabelError, LibraryError
from nmid_desktop.core.store import (
    DescriptionRecord,
    DescriptionRow,
    ImageFilter,
    PredictionRecord,
    Store,
)


def _file(folder: Path, name: str, content: bytes) -> tuple[Path, str]:
    path = folder / name
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def _add(store: Store, folder: Path, n: int, *, copy: bool = True, prefix: str = "img") -> list[int]:
    ids = []
    for i in range(n):
        path, sha = _file(folder, f"{prefix}{i}.png", f"{prefix}-{i}".encode())
        image_id, created = store.add_image(
            path, sha256=sha, page=0, n_pages=1, width=20, height=10, dtype="uint8", copy=copy
        )
        assert created
        ids.append(image_id)
    return ids


@pytest.fixture
def store(library: Library) -> Store:
    return library.open()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    return folder


# -- lifecycle and schema ------------------------------------------------------------------


def test_open_without_create_needs_a_library(library: Library) -> None:
    with pytest.raises(LibraryError, match="no library"):
        library.open(create=False)
    if library.backend == "sqlite":
        assert not Path(library.location).exists()
    library.open().close()
    reopened = library.open(create=False)
    assert reopened.labels_version() == 0 and reopened.get_meta("created_at")


def test_nested_transactions_roll_back_their_own_part(store: Store) -> None:
    with store.transaction():
        store.add_class("outer")
        with pytest.raises(RuntimeError), store.transaction():
            store.add_class("inner")
            raise RuntimeError("boom")
        store.add_class("after")
    assert [c.name for c in store.classes()] == ["after", "outer"]
    with pytest.raises(RuntimeError), store.transaction():
        store.add_class("lost")
        raise RuntimeError("boom")
    assert "lost" not in [c.name for c in store.classes()]


def test_each_thread_has_its_own_connection_and_writes_land(store: Store, src: Path) -> None:
    ids = _add(store, src, 40)
    errors: list[BaseException] = []
    conns: list[object] = []  # the connections themselves: a freed one's id can be reused

    def work(part: list[int], label: str) -> None:
        try:
            conns.append(store._conn())
            for image_id in part:
                store.set_label(image_id, label, source="expert")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(ids[k::2], f"c{k}")) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({id(c) for c in conns}) == 2 and all(store._conn() is not c for c in conns)
    assert {c.name: c.count for c in store.classes()} == {"c0": 20, "c1": 20}
    assert store.labels_version() == 40  # one step per change (a class created on the way is part of it)


# -- images --------------------------------------------------------------------------------


def test_add_image_copies_by_hash_and_recognises_duplicates(store: Store, src: Path) -> None:
    path, sha = _file(src, "a.PNG", b"pixels")
    image_id, created = store.add_image(
        path, sha256=sha, page=0, n_pages=1, width=4, height=3, dtype="uint16", pixel_size_m=2e-9,
        crop_box=(0, 0, 4, 2),
    )
    assert created
    record = store.get_image(image_id)
    assert record.path == store.root / "images" / sha[:2] / f"{sha}.png"
    assert record.path.read_bytes() == b"pixels"
    assert record.stored and record.original_name == "a.PNG" and record.dtype == "uint16"
    assert record.crop_box == (0, 0, 4, 2) and record.pixel_size_m == 2e-9
    assert record.label is None and record.review == "pending"
    # No temporary file is left beside the copy.
    assert [p.name for p in record.path.parent.iterdir()] == [record.path.name]
    other, _ = _file(src, "copy.png", b"pixels")
    assert store.add_image(other, sha256=sha, page=0, n_pages=1, width=4, height=3, dtype="uint8") == (image_id, False)
    assert store.count_images() == 1
    assert store.find_image(sha).id == image_id and store.find_image(sha, page=1) is None


def test_a_file_that_does_not_match_its_hash_is_not_stored(store: Store, src: Path) -> None:
    path, _ = _file(src, "a.png", b"edited after hashing")
    stale = hashlib.sha256(b"before").hexdigest()
    with pytest.raises(LibraryError, match="changed while"):
        store.add_image(path, sha256=stale, page=0, n_pages=1, width=4, height=3, dtype="uint8")
    assert store.count_images() == 0
    assert [p for p in (store.root / "images").rglob("*") if p.is_file()] == []


def test_pages_are_separate_images_and_reference_mode(store: Store, src: Path) -> None:
    path, sha = _file(src, "stack.tif", b"tiff-bytes")
    ids = [
        store.add_image(path, sha256=sha, page=p, n_pages=3, width=5, height=5, dtype="uint8", copy=False)[0]
        for p in range(3)
    ]
    assert len(set(ids)) == 3
    record = store.get_image(ids[2])
    assert record.page == 2 and not record.stored and record.path == path.absolute()
    assert not (store.root / "images").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sha256": "abc"}, "64 lower-case hex"),
        ({"page": 2}, "page 2"),
        ({"width": 0}, "empty"),
        ({"crop_box": (0, 0, 30, 5)}, "crop box"),
        ({"crop_box": (5, 0, 5, 5)}, "crop box"),
        ({"source_image_id": 999}, "source image"),
    ],
)
def test_add_image_validates(store: Store, src: Path, kwargs: dict, message: str) -> None:
    path, sha = _file(src, "a.png", b"x")
    args = dict(sha256=sha, page=0, n_pages=1, width=20, height=10, dtype="uint8")
    args.update(kwargs)
    with pytest.raises(LibraryError, match=message):
        store.add_image(path, **args)
    assert store.count_images() == 0


def test_filters_and_paging(store: Store, src: Path) -> None:
    ids = _add(store, src, 12)
    for image_id in ids[:5]:
        store.set_label(image_id, "a", source="import")
    store.set_label(ids[5], "b", source="lmm", model="gpt-x", confidence=0.8)
    store.set_review(ids[0], "rejected")
    assert store.count_images(ImageFilter(label="a")) == 5
    assert store.count_images(ImageFilter(unlabelled=True)) == 6
    assert store.count_images(ImageFilter(label_source="lmm", review="pending")) == 1
    assert [im.id for im in store.images(ImageFilter(ids=[ids[3], ids[1], 999]))] == [ids[1], ids[3]]
    assert [im.id for im in store.images(limit=5, offset=10)] == ids[10:]
    assert [im.id for im in store.iter_images(batch=5)] == ids
    store.set_crop_box(ids[1], (1, 1, 19, 9))
    assert store.get_image(ids[1]).crop_box == (1, 1, 19, 9)
    with pytest.raises(LibraryError, match="no image"):
        store.get_image(999)


# -- labels, history, undo/redo --------------------------------------------------------------


def test_a_kept_suspect_label_is_a_kept_row_in_the_history_and_undoes_like_a_review(store: Store, src: Path) -> None:
    (image_id,) = _add(store, src, 1)
    store.set_label(image_id, "pores", source="lmm", model="m1")
    event = store.set_review(image_id, "accepted", actor="ann", kind="kept")
    assert (event.kind, event.old_label, event.new_label, event.new_review) == ("kept", "pores", "pores", "accepted")
    assert store.history(image_id)[0].kind == "kept" and store.get_image(image_id).review == "accepted"
    assert store.undo() is not None and store.get_image(image_id).review == "pending"
    with pytest.raises(LabelError, match="history kind"):
        store.set_review(image_id, "accepted", kind="label")


def test_set_label_records_provenance_and_review_defaults(store: Store, src: Path) -> None:
    (image_id,) = _add(store, src, 1)
    event = store.set_label(image_id, "pores", source="lmm", actor="ann", model="m1", prompt_version="p3",
                            confidence=0.7)
    assert (event.old_label, event.new_label, event.new_review) == (None, "pores", "pending")
    record = store.get_image(image_id)
    assert (record.label, record.label_source, record.label_model, record.label_confidence) == ("pores", "lmm", "m1", 0.7)
    assert (record.label_actor, record.label_prompt_version, record.review) == ("ann", "p3", "pending")
    review = store.set_review(image_id, "accepted", actor="bob")
    assert review.source == "expert" and review.actor == "bob"
    record = store.get_image(image_id)
    # Accepting keeps who made the label; the history says who accepted it.
    assert (record.label_source, record.label_model, record.review) == ("lmm", "m1", "accepted")
    assert store.set_label(image_id, "wires", source="expert").new_review == "accepted"
    cleared = store.set_label(image_id, None, source="expert")
    assert cleared.new_label is None and store.get_image(image_id).label_source is None
    assert [e.id for e in store.history(image_id)] == [4, 3, 2, 1]
    for bad in (dict(source="robot"), dict(source="expert", review="maybe"), dict(source="lmm", confidence=float("nan"))):
        with pytest.raises(LabelError):
            store.set_label(image_id, "x", **bad)
    with pytest.raises(LabelError, match="'/'"):
        store.set_label(image_id, "../x", source="expert")
    with pytest.raises(LibraryError, match="no image"):
        store.set_label(999, "x", source="expert")


def test_accepting_needs_a_label_and_rejected_images_are_left_out(store: Store, src: Path) -> None:
    a, b, c = _add(store, src, 3)
    with pytest.raises(LabelError, match="no label"):
        store.set_review(a, "accepted")
    store.set_review(a, "rejected")  # rejecting an unlabelled junk image is fine
    store.set_label(b, "k", source="import")
    store.set_label(c, "k", source="local", confidence=0.9)
    assert store.labelled() == [(b, "k"), (c, "k")]
    assert store.labelled(include_pending=False) == [(b, "k")]
    store.set_review(c, "rejected")
    assert store.labelled() == [(b, "k")]
    assert store.classes()[0].count == 1


def test_synthetic_images_only_when_accepted_and_asked(store: Store, src: Path) -> None:
    (real,) = _add(store, src, 1)
    path, sha = _file(src, "syn.png", b"synthetic")
    syn, _ = store.add_image(path, sha256=sha, page=0, n_pages=1, width=8, height=8, dtype="uint8",
                             synthetic=True, source_image_id=real)
    store.set_label(real, "k", source="import")
    store.set_label(syn, "k", source="synthetic", model="gpt-image-1")
    assert store.labelled(include_synthetic=True) == [(real, "k")]  # pending synthetic: never
    store.set_review(syn, "accepted")
    assert store.labelled() == [(real, "k")]
    assert store.labelled(include_synthetic=True) == [(real, "k"), (syn, "k")]
    assert store.get_image(syn).source_image_id == real and store.get_image(syn).synthetic


def test_undo_redo_without_limit_and_new_change_discards_redo(store: Store, src: Path) -> None:
    (image_id,) = _add(store, src, 1)
    labels = [f"c{i}" for i in range(60)]
    for label in labels:
        store.set_label(image_id, label, source="expert")
    for expected in reversed([None, *labels[:-1]]):
        event = store.undo()
        assert event is not None and event.undone
        assert store.get_image(image_id).label == expected
    assert store.undo() is None
    for label in labels[:30]:
        assert store.redo().new_label == label
        assert store.get_image(image_id).label == label
    # Undo restores the previous provenance, not just the name.
    store.set_label(image_id, "lmm-said", source="lmm", model="m", confidence=0.5)
    assert store.redo() is None  # the 30 undone changes are cut off
    store.undo()
    record = store.get_image(image_id)
    assert (record.label, record.label_source, record.review) == ("c29", "expert", "accepted")
    history = store.history(image_id, limit=1000)
    assert len(history) == 61  # the cut-off rows are kept for audit
    assert sum(e.undone for e in history) == 31


def test_rename_merge_and_undo_of_a_merge(store: Store, src: Path) -> None:
    ids = _add(store, src, 6)
    for image_id in ids[:4]:
        store.set_label(image_id, "spheres", source="import")
    for image_id in ids[4:]:
        store.set_label(image_id, "balls", source="lmm", model="m", confidence=0.6)
    store.update_class("spheres", description="round particles", color="#FF0000")
    renamed = store.rename_class("spheres", "particles")
    assert (renamed.name, renamed.count, renamed.description, renamed.color) == ("particles", 4, "round particles", "#ff0000")
    assert store.get_image(ids[0]).label == "particles"
    assert store.history(ids[0])[0].new_label == "particles"  # history follows the rename
    with pytest.raises(LabelError, match="already exists"):
        store.rename_class("particles", "balls")
    with pytest.raises(LabelError, match="no class"):
        store.rename_class("nothing", "x")
    with pytest.raises(LabelError, match="#rrggbb"):
        store.update_class("particles", color="red")

    version = store.labels_version()
    assert store.merge_classes("balls", "particles", actor="ann") == 2
    assert store.labels_version() > version
    assert [c.name for c in store.classes()] == ["particles"]
    merged = store.get_image(ids[4])
    assert (merged.label, merged.label_source, merged.review) == ("particles", "lmm", "pending")
    event = store.history(ids[4])[0]
    assert (event.old_label, event.new_label, event.actor) == ("balls", "particles", "ann")
    # One undo reverts the whole merge and brings the class back.
    store.undo()
    assert {c.name: c.count for c in store.classes()} == {"balls": 2, "particles": 4}
    assert store.get_image(ids[5]).label == "balls"
    store.redo()
    assert {c.name: c.count for c in store.classes()} == {"particles": 6}
    with pytest.raises(LabelError, match="into itself"):
        store.merge_classes("particles", "particles")


def test_delete_class_only_when_no_image_carries_it(store: Store, src: Path) -> None:
    (image_id,) = _add(store, src, 1)
    store.add_class("empty")
    store.set_label(image_id, "used", source="expert")
    store.set_review(image_id, "rejected")  # a rejected image still carries its class
    version = store.labels_version()
    store.delete_class("empty")
    assert store.labels_version() > version
    assert [c.name for c in store.classes()] == ["used"]
    with pytest.raises(LabelError, match="still labels 1 image"):
        store.delete_class("used")
    with pytest.raises(LabelError, match="no class"):
        store.delete_class("empty")
    assert store.get_image(image_id).label == "used"


def test_labels_version_grows_with_every_label_change(store: Store, src: Path) -> None:
    (image_id,) = _add(store, src, 1)
    seen = [store.labels_version()]
    for step in (
        lambda: store.add_class("a"),
        lambda: store.set_label(image_id, "a", source="expert"),
        lambda: store.set_review(image_id, "rejected"),
        lambda: store.undo(),
        lambda: store.redo(),
        lambda: store.rename_class("a", "b"),
        lambda: store.update_class("b", description="d"),
    ):
        step()
        seen.append(store.labels_version())
    assert seen == sorted(set(seen))
    store.add_class("b")  # exists: no change
    store.set_meta("note", 1)
    assert store.labels_version() == seen[-1]


# -- embeddings, predictions, descriptions, usage, split, meta ----------------------------------


def test_embeddings_round_trip_in_requested_order(store: Store, src: Path) -> None:
    ids = _add(store, src, 300, copy=False)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 1280)).astype(np.float32)
    store.put_embeddings("enc@abc", ids, vectors)
    got_ids, got = store.get_embeddings("enc@abc")
    assert got.dtype == np.float32 and got.shape == (300, 1280) and got.flags.writeable
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got, vectors)
    wanted = [ids[10], 999_999, ids[3]]
    sub_ids, sub = store.get_embeddings("enc@abc", wanted)
    np.testing.assert_array_equal(sub_ids, [ids[10], ids[3]])
    np.testing.assert_array_equal(sub, vectors[[10, 3]])
    store.put_embeddings("enc@abc", ids[:1], np.ones((1, 1280), dtype=np.float64))  # replaced, cast to float32
    assert store.get_embeddings("enc@abc", ids[:1])[1].sum() == 1280
    with pytest.raises(LibraryError, match="1280-dimensional"):
        store.put_embeddings("enc@abc", ids[:1], np.ones((1, 64), dtype=np.float32))
    with pytest.raises(LibraryError, match="shape"):
        store.put_embeddings("enc@abc", ids[:2], np.ones((1, 1280), dtype=np.float32))
    store.put_embeddings("other", ids[:2], np.zeros((2, 8), dtype=np.float32))
    store.drop_embeddings("enc@abc")
    assert store.get_embeddings("enc@abc")[0].size == 0
    assert store.get_embeddings("other")[1].shape == (2, 8)
    store.drop_embeddings()
    assert store.embedding_keys() == {}


def test_predictions_descriptions_and_usage(store: Store, src: Path) -> None:
    a, b = _add(store, src, 2)
    first = store.add_prediction(PredictionRecord(a, "knn", "x", [("x", 0.6), ("y", 0.4)], 0.6, demo_ids=[b]))
    second = store.add_prediction(
        PredictionRecord(a, "lmm", None, [], None, model="m", prompt_version="v1", valid=False, reason="no answer",
                         tokens_in=100, tokens_out=5, cost_usd=0.01)
    )
    third = store.add_prediction(PredictionRecord(a, "knn", "y", [("y", 0.9)], 0.9))
    store.add_prediction(PredictionRecord(b, "knn", "x", [("x", 1.0)], 1.0))
    assert [p.id for p in store.predictions(a)] == [third, second, first]
    assert store.predictions(a)[2].ranking == [("x", 0.6), ("y", 0.4)] and store.predictions(a)[2].demo_ids == [b]
    latest = store.latest_predictions("knn")
    assert sorted(latest) == [a, b] and latest[a].id == third and latest[a].label == "y"
    assert not store.predictions(a)[1].valid and store.predictions(a)[1].reason == "no answer"
    with pytest.raises(LibraryError):
        store.add_prediction(PredictionRecord(999, "knn", "x", [], None))

    rows = [DescriptionRow("basics", "What material?", "ZnO"), DescriptionRow("surface", "Pores?", "none")]
    desc_id = store.add_description(DescriptionRecord(a, "m", "v2", rows))
    got = store.descriptions(a)
    assert got[0].id == desc_id and got[0].rows == rows and got[0].at

    store.record_usage(kind="describe", model="m", tokens_in=10, tokens_out=20, cost_usd=0.25, images=1)
    store.record_usage(kind="predict", model="m", tokens_in=10, tokens_out=20, cost_usd=0.5)
    assert store.total_cost() == pytest.approx(0.75)


def test_query_start_reads_what_four_calls_read(store: Store, src: Path) -> None:
    a, b = _add(store, src, 2)
    store.set_label(a, "pores", source="expert")
    vector = np.arange(8, dtype=np.float32) / 10
    store.put_embeddings("enc@1", [a], vector[None, :])
    store.add_prediction(PredictionRecord(a, "lmm", "pores", [("pores", 0.8)], 0.8, model="m", rationale="old"))
    newest = store.add_prediction(PredictionRecord(a, "lmm", "fibres", [("fibres", 0.7)], 0.7, model="m"))
    store.add_prediction(PredictionRecord(a, "knn", "pores", [("pores", 1.0)], 1.0))  # another predictor: not it

    start = store.query_start(a, "enc@1")
    assert start.record == store.get_image(a) and start.labels_version == store.labels_version()
    assert start.embedding is not None and start.embedding.dtype == np.float32
    np.testing.assert_array_equal(start.embedding, store.get_embeddings("enc@1", [a])[1][0])
    assert start.answer is not None and (start.answer.id, start.answer.label) == (newest, "fibres")

    other = store.query_start(b, "enc@2")  # no embedding of that encoder, never asked the model
    assert other.record.id == b and other.embedding is None and other.answer is None
    assert store.query_start(a, None).embedding is None  # no encoder named: nothing read
    with pytest.raises(LibraryError, match="no image"):
        store.query_start(999, "enc@1")


def test_query_finish_stores_the_prediction_and_reads_the_demonstrations(store: Store, src: Path) -> None:
    a, b, c = _add(store, src, 3)
    store.set_label(b, "pores", source="expert")
    records = store.query_finish([c, 999, b], PredictionRecord(a, "knn", "pores", [("pores", 0.9)], 0.9, demo_ids=[c, b]))
    assert [r.id for r in records] == [c, b] and records[1] == store.get_image(b)  # in order; unknown ids left out
    (stored,) = store.predictions(a)
    assert (stored.predictor, stored.label, stored.demo_ids) == ("knn", "pores", [c, b])
    assert [r.id for r in store.query_finish([a], None)] == [a] and len(store.predictions(a)) == 1
    with pytest.raises(LabelError, match="finite"):  # refused before anything is written
        store.query_finish([b], PredictionRecord(a, "knn", "pores", [], float("nan")))
    with pytest.raises(LibraryError, match="prediction"):  # an image not in the library
        store.query_finish([b], PredictionRecord(999, "knn", "pores", [], None))
    assert len(store.predictions(a)) == 1 and store.get_image(b).label == "pores"  # nothing half done


def test_split_keeps_test_fixed_and_refuses_synthetic_test(store: Store, src: Path) -> None:
    a, b, c = _add(store, src, 3)
    store.set_split({a: "train", b: "test", c: "val"})
    store.set_split({a: "val", b: "train", c: "test"})
    assert store.get_split() == {a: "val", b: "test", c: "test"}
    path, sha = _file(src, "s.png", b"syn")
    syn, _ = store.add_image(path, sha256=sha, page=0, n_pages=1, width=2, height=2, dtype="uint8", synthetic=True)
    with pytest.raises(LibraryError, match="synthetic"):
        store.set_split({syn: "test"})
    with pytest.raises(LibraryError, match="split must be"):
        store.set_split({a: "holdout"})
    assert store.get_split() == {a: "val", b: "test", c: "test"}


def test_meta_is_json(store: Store) -> None:
    assert store.get_meta("missing", {"d": 1}) == {"d": 1}
    store.set_meta("index", {"encoder": "k", "version": 3, "ids": [1, 2]})
    assert store.get_meta("index") == {"encoder": "k", "version": 3, "ids": [1, 2]}
    assert store.get_meta("created_at")


def test_wait_for_changes_returns_at_once_after_a_change_and_at_the_timeout_without(
    store: Store, library: Library, src: Path
) -> None:
    (image_id,) = _add(store, src, 1)
    since = store.labels_version()
    other = library.open(user="colleague")  # another client of the same library
    assert other.wait_for_changes(since, timeout_s=0.2) == since
    store.set_label(image_id, "k", source="expert")
    assert other.wait_for_changes(since, timeout_s=30) == since + 1
