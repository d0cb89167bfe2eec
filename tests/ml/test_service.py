"""The classifier service and the retrieval commands on a small demo library with the real encoder."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nmid_desktop.core.demo import generate_demo
from nmid_desktop.core.errors import ImageError
from nmid_desktop.core.importer import import_folder
from nmid_desktop.core.jobs import run_job
from nmid_desktop.core.store import ImageFilter, open_library
from nmid_desktop.index.annoy_index import IndexMeta, sidecar_path
from nmid_desktop.predict.service import Classifier

PER_CLASS = 6


@pytest.fixture(scope="module")
def encoder():
    import torch

    torch.set_num_threads(2)
    from nmid_desktop.ml.encoders import load_encoder

    # The default's base network without the 8-view averaging: the service is the same
    # code either way, and one view keeps these tests 8x cheaper.
    return load_encoder("efficientnet-lite0-imagenet", device="cpu")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, encoder) -> Path:
    """A library of 5 demo classes x 6 labelled images plus 5 unlabelled ones, all embedded."""
    from nmid_desktop.ml.embed import embed_images

    root = tmp_path_factory.mktemp("service")
    run_job(generate_demo(root / "labelled", per_class=PER_CLASS, seed=1, size=96))
    run_job(generate_demo(root / "extra", per_class=1, seed=2, size=96))
    store = open_library(root / "lib")
    run_job(import_folder(store, root / "labelled"))
    run_job(import_folder(store, root / "extra", layout="flat"))  # unlabelled
    run_job(embed_images(store, encoder, num_workers=0))
    store.close()
    return root / "lib"


@pytest.fixture
def store(template: Path, tmp_path: Path):
    shutil.copytree(template, tmp_path / "lib")
    s = open_library(tmp_path / "lib", create=False)
    yield s
    s.close()


@pytest.fixture
def clf(store, encoder) -> Classifier:
    c = Classifier(store, encoder=encoder)
    run_job(c.prepare())
    yield c
    if c.searcher is not None:
        c.searcher.close()


def _unlabelled(store) -> list[int]:
    return [r.id for r in store.images(ImageFilter(unlabelled=True))]


def test_prepare_builds_the_index_and_the_next_one_reuses_it(store, clf, encoder) -> None:
    path = clf.index_file
    assert path.is_file() and path.parent == store.root / "index"
    meta = IndexMeta.read(sidecar_path(path))
    assert sorted(meta.item_ids) == sorted(i for i, _ in store.labelled())
    assert meta.encoder_key == encoder.key and meta.dim == encoder.dim
    assert not clf.needs_rebuild
    again = Classifier(store, encoder=encoder)
    run_job(again.prepare())
    assert IndexMeta.read(sidecar_path(path)).built_at == meta.built_at  # opened, not rebuilt
    assert again.searcher.index is not None and len(again.searcher.index) == 5 * PER_CLASS
    again.searcher.close()


def test_accepted_image_is_a_demonstration_for_the_very_next_query(store, clf) -> None:
    new = _unlabelled(store)[0]
    vector = clf.embed_image(new)
    assert new not in [d.image_id for d in clf.similar(vector, 5)]
    store.set_label(new, "fibres", source="expert")  # the expert accepts "fibres"
    clf.notify_labelled([new])
    (first,) = clf.similar(vector, 1)
    assert first.image_id == new and first.label == "fibres" and first.source == "expert"
    assert first.similarity == pytest.approx(1.0, abs=1e-4)
    assert clf.predict_local(vector, "knn", k=1).demo_ids == (new,)
    # It sits in the exact buffer until the next rebuild; the index file was not touched.
    assert new in clf.searcher.buffer and new not in clf.searcher.index


def test_label_changes_by_anyone_are_seen_without_notification(store, clf) -> None:
    target = store.labelled()[0][0]
    vector = clf.embed_image(target)
    assert clf.similar(vector, 1)[0].image_id == target
    store.set_label(target, "renamed-class", source="expert")
    first = clf.similar(vector, 1)[0]
    assert first.image_id == target and first.label == "renamed-class"  # label from the store
    store.set_review(target, "rejected")
    assert target not in [d.image_id for d in clf.similar(vector, 10)]
    assert clf.searcher.drift == 1
    store.undo()  # the rejection is undone: the image is a demonstration again
    assert clf.similar(vector, 1)[0].image_id == target


def test_pending_synthetic_images_are_never_demonstrations(store, clf, tmp_path: Path) -> None:
    src = store.labelled()[0]
    record = store.get_image(src[0])
    made = tmp_path / "synthetic.png"  # stands in for a generated image: the source, mirrored
    with Image.open(record.path) as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(made)
    syn_id, _ = store.add_image(
        made, sha256=hashlib.sha256(made.read_bytes()).hexdigest(), page=0, n_pages=1,
        width=record.width, height=record.height, dtype="uint8", synthetic=True, source_image_id=src[0],
    )
    store.set_label(syn_id, src[1], source="synthetic")  # pending review
    vector = clf.embed_image(syn_id)
    assert syn_id not in [d.image_id for d in clf.similar(vector, 10)]
    store.set_review(syn_id, "accepted")
    demos = clf.similar(vector, 2)
    assert {d.image_id for d in demos} >= {syn_id}
    assert next(d for d in demos if d.image_id == syn_id).synthetic


def test_stale_sidecar_triggers_a_rebuild(store, clf, encoder) -> None:
    side = sidecar_path(clf.index_file)
    clf.searcher.close()
    data = json.loads(side.read_text())
    data["encoder_key"] = "someone-else@000000000000"
    side.write_text(json.dumps(data))
    fresh = Classifier(store, encoder=encoder)
    run_job(fresh.prepare())
    assert IndexMeta.read(side).encoder_key == encoder.key
    assert len(fresh.searcher.index) == 5 * PER_CLASS
    fresh.searcher.close()
    clf.index_file.write_bytes(b"\0" * 100)  # a corrupt file is rebuilt as well
    again = Classifier(store, encoder=encoder)
    run_job(again.prepare())
    assert len(again.searcher.index) == 5 * PER_CLASS
    again.searcher.close()


def test_rebuild_when_due_takes_buffered_images_into_the_index(store, clf) -> None:
    new = _unlabelled(store)
    for image_id in new:
        store.set_label(image_id, "porous", source="expert")
    clf.notify_labelled(new)
    assert len(clf.searcher.buffer) == len(new) and clf.needs_rebuild  # 5 > 5 % of 30
    run_job(clf.rebuild_index())
    assert not clf.needs_rebuild and len(clf.searcher.buffer) == 0
    assert set(new) <= set(clf.searcher.index.ids.tolist())
    assert clf.similar(clf.embed_image(new[0]), 1)[0].image_id == new[0]


def test_probe_refits_when_labels_change(store, clf) -> None:
    some = [i for i, label in store.labelled() if label == "porous"][:3]
    vector = clf.embed_image(some[0])
    before = clf.predict_local(vector, "logreg")
    assert before.top1 == "porous" and "voids" not in before.labels
    assert sum(p for _, p in before.items) == pytest.approx(1.0)
    for image_id in some:
        store.set_label(image_id, "voids", source="expert")
    after = clf.predict_local(vector, "logreg")
    assert "voids" in after.labels and after.rank_of("voids") <= 2


def test_embed_file_matches_the_library_embedding(store, clf, tmp_path: Path) -> None:
    record = store.images(ImageFilter(unlabelled=False), limit=1)[0]
    copy = tmp_path / "copy.png"
    shutil.copy(record.path, copy)
    np.testing.assert_allclose(clf.embed_file(copy), clf.embed_image(record.id), atol=1e-5)
    assert clf.library_image(copy).id == record.id
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError):
        clf.embed_file(bad)


def test_queries_from_worker_threads_while_labelling(store, clf) -> None:
    vectors = [clf.embed_image(i) for i, _ in store.labelled()[:4]]
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker() -> None:
        try:
            while not stop.is_set():
                for v in vectors:
                    assert len(clf.similar(v, 3)) == 3
                    clf.predict_local(v, "knn")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for image_id in _unlabelled(store):
            store.set_label(image_id, "particles", source="expert")
            clf.notify_labelled([image_id])
        run_job(clf.rebuild_index())
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)


# -- commands --------------------------------------------------------------------------
def _nmid(argv: list[str]) -> int:
    from nmid_desktop.cli import main

    return main(argv)


def test_commands_index_similar_classify(store, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lib = str(store.root)
    assert _nmid(["index", "--library", lib, "--check", "--queries", "20"]) == 0
    out = capsys.readouterr().out
    assert "30 images" in out and "recall@10: 1.0000" in out and "p95" in out
    record = next(r for r in store.images(ImageFilter(unlabelled=False)) if r.label == "nanowires")
    query = tmp_path / "query.png"
    shutil.copy(record.path, query)
    assert _nmid(["similar", "--library", lib, str(query), "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert f"library image {record.id}" in out  # recognised, and left out of its own neighbours
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 3 and all(int(row[1]) != record.id for row in rows)
    assert _nmid(["classify", "--library", lib, str(query), "--predictor", "local", "--local", "knn", "--save"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{query}: ") and "(knn (itself left out))" in out
    printed = out.split(": ")[1].split(" (")[0]
    first, novelty = out.splitlines()[:2]
    assert len(first.split("): ")[1].split(", ")) == 5  # the top 5 of the ranking, with probabilities
    assert "like your library: nearest " in novelty and ", typical " in novelty and "(novelty " in novelty
    saved = store.predictions(record.id)
    assert saved and saved[0].predictor == "knn" and saved[0].label == printed
    assert record.id not in saved[0].demo_ids and len(saved[0].ranking) == 5
    assert _nmid(["classify", "--library", lib, str(tmp_path / "missing.png")]) == 1
    assert "missing.png is not a file" in capsys.readouterr().err


def test_command_classify_shows_the_badge_instead_of_the_label_for_an_image_unlike_the_library(
    store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lib = str(store.root)
    # Something unlike any demo class: a flat grey frame with a checkerboard corner.
    odd = np.full((96, 96), 128, np.uint8)
    odd[:24, :24] = (np.indices((24, 24)).sum(0) % 2 * 255).astype(np.uint8)
    Image.fromarray(odd).save(tmp_path / "odd.png")
    known = tmp_path / "known.png"
    shutil.copy(next(r for r in store.images(ImageFilter(unlabelled=False)) if r.label == "porous").path, known)
    args = ["classify", "--library", lib, "--predictor", "local", "--local", "knn"]
    assert _nmid([*args, str(tmp_path / "odd.png"), str(known)]) == 0
    lines = capsys.readouterr().out.splitlines()
    odd_line = lines.index(next(line for line in lines if line.startswith(f"{tmp_path / 'odd.png'}: ")))
    badge, suggestion = lines[odd_line:odd_line + 2]
    assert badge.startswith(f"{tmp_path / 'odd.png'}: unlike your library: nearest ") and ", typical " in badge
    assert suggestion.startswith("  not trusted: nearest class ") and "%" not in badge
    first = next(line for line in lines if line.startswith(f"{known}: "))
    assert first.startswith(f"{known}: porous (knn (itself left out)): porous ")  # a known image: as before
    assert _nmid([*args, "--json", str(tmp_path / "odd.png"), str(known)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["trusted"] for r in rows] == [False, True] and rows[0]["novelty"]["novel"] is True
    assert set(rows[0]["novelty"]) >= {"score", "nearest", "typical", "threshold"} and rows[1]["itself_left_out"]
    assert _nmid([*args[:-4], "--predictor", "both", "--json", str(known)]) == 1
    assert "--json covers the local predictor only" in capsys.readouterr().err


def test_command_evaluate_writes_table_json_and_figure(store, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lib = str(store.root)
    code = _nmid([
        "evaluate", "--library", lib, "-k", "1", "3", "--split", "kfold", "--folds", "3",
        "--json", str(tmp_path / "e.json"), "--figure", str(tmp_path / "e.png"),
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0-imagenet" in out and "macroF1" in out and "best:" in out
    assert "ECE" in out and "ECEcal" in out
    data = json.loads((tmp_path / "e.json").read_text())
    assert len(data["configurations"]) == 5 and data["n_test"] == 5 * PER_CLASS
    knn_sim = [c for c in data["configurations"] if c["predictor"] == "knn" and c["strategy"] == "similarity"]
    assert all(0 <= c["ece"] <= 1 and c["ece_calibrated"] is not None for c in knn_sim)
    assert all(c["ece_calibrated"] is None for c in data["configurations"] if c["strategy"] == "random")
    assert (tmp_path / "e.png").stat().st_size > 10_000


def test_view_averaged_encoder_is_invariant_and_cached_apart(encoder) -> None:
    from nmid_desktop.ml.views import ViewAveragedEncoder

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(60, 80), dtype=np.uint8)
    d4 = ViewAveragedEncoder(encoder, "d4")
    assert d4.key == encoder.key + "+d4" and d4.dim == encoder.dim
    a, b, c = d4.embed([image, np.rot90(image).copy(), image[:, ::-1].copy()])
    np.testing.assert_allclose(a, c, atol=1e-5)  # a mirrored image has the same embedding
    plain = encoder.embed([image])[0]
    assert abs(float(a @ plain)) < 0.9999  # and it differs from the single-view embedding
    flips = ViewAveragedEncoder(encoder, "flips")
    x, y = flips.embed([image, image[::-1, ::-1].copy()])
    np.testing.assert_allclose(x, y, atol=1e-5)
    assert np.linalg.norm(b) == pytest.approx(1.0, abs=1e-5)


def test_assess_calibrates_flags_a_novel_image_and_refits_on_label_change(store, clf, tmp_path: Path) -> None:
    record = next(r for r in store.images(ImageFilter(unlabelled=False)) if r.label == "porous")
    known = clf.assess(clf.embed_image(record.id), "knn", 5, exclude_ids=[record.id])
    assert known.ranking.labels == known.raw.labels and known.temperature > 0
    assert not known.novelty.novel and known.novelty.reference in {"library", known.label}
    # Something unlike any demo class: a flat grey frame with a checkerboard corner.
    odd = np.full((96, 96), 128, np.uint8)
    odd[:24, :24] = (np.indices((24, 24)).sum(0) % 2 * 255).astype(np.uint8)
    Image.fromarray(odd).save(tmp_path / "odd.png")
    novel = clf.assess(clf.embed_file(tmp_path / "odd.png"), "knn", 5)
    assert novel.novelty.score > known.novelty.score and novel.novelty.nearest < known.novelty.nearest
    model = clf.trust_model()
    assert clf.trust_model() is model  # cached while the labels stay the same
    store.set_label(record.id, "fibres", source="expert")
    assert clf.trust_model() is not model


def test_assess_without_waiting_uses_the_previous_fit_and_refits_in_the_background(
    store, clf, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nmid_desktop.predict.service as service

    records = [r for r in store.images(ImageFilter(unlabelled=False)) if r.label == "porous"]
    vector = clf.embed_image(records[0].id)
    monkeypatch.setattr(service, "INLINE_TRUST_FIT", 10)  # this library counts as large: first fit in the background
    first = clf.assess(vector, "knn", 5, wait=False)
    assert first.stale and first.novelty is None and first.ranking == first.raw and first.trusted
    assert clf.wait_for_trust(timeout=120)
    assert not clf.assess(vector, "knn", 5, wait=False).stale
    model = clf.trust_model()
    store.set_label(records[1].id, "fibres", source="expert")
    during = clf.assess(vector, "knn", 5, wait=False)
    assert during.stale and during.to_dict()["stale"] is True  # the previous fit, marked, without waiting
    assert clf.wait_for_trust(timeout=120)
    refitted = clf.trust_model()
    assert refitted is not model  # the background refit has the new label:
    assert dict(zip(refitted.ids.tolist(), refitted.labels, strict=True))[records[1].id] == "fibres"
    after = clf.assess(vector, "knn", 5, wait=False)
    assert not after.stale and clf.trust_model() is refitted


def test_commands_review_errors_and_next(store, capsys: pytest.CaptureFixture[str]) -> None:
    lib = str(store.root)
    wrong = next(r for r in store.images(ImageFilter(unlabelled=False)) if r.label == "nanowires")
    store.set_label(wrong.id, "particles", source="expert")
    assert _nmid(["review", "errors", "--library", lib, "--json"]) == 0
    suspects = json.loads(capsys.readouterr().out)
    assert suspects and set(suspects[0]) >= {"id", "name", "label", "suggested", "score"}
    assert wrong.id in [s["id"] for s in suspects[:3]]
    assert _nmid(["review", "next", "--library", lib, "--json"]) == 0
    queue = json.loads(capsys.readouterr().out)
    assert sorted(c["id"] for c in queue) == sorted(_unlabelled(store))
    assert _nmid(["review", "next", "--library", lib, "--limit", "2"]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]) == 2


@pytest.mark.parametrize("faiss_installed", [True, False], ids=["ivf", "no-faiss-pca"])
def test_large_library_gets_the_large_index_and_reopens_it(store, encoder, monkeypatch: pytest.MonkeyPatch,
                                                           faiss_installed: bool) -> None:
    import sys

    import nmid_desktop.predict.service as service
    from nmid_desktop.index.ivf import IvfIndex, IvfMeta
    from nmid_desktop.index.reduced import ReducedAnnoyIndex, ReducedMeta

    kind: type[IvfIndex] | type[ReducedAnnoyIndex] = IvfIndex if faiss_installed else ReducedAnnoyIndex
    meta_cls: type[IvfMeta] | type[ReducedMeta] = IvfMeta if faiss_installed else ReducedMeta
    if faiss_installed:
        pytest.importorskip("faiss")
    else:
        monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` fails as if it were not installed
    monkeypatch.setattr(service, "LARGE_FROM", 10)  # the threshold, lowered to this small library
    big = Classifier(store, encoder=encoder)
    run_job(big.prepare(rebuild=True))
    assert isinstance(big.searcher.index, kind) and len(big.searcher.index) == 5 * PER_CLASS
    some = big.searcher.index.ids[:3].tolist()
    for image_id in some:
        assert big.similar(big.embed_image(image_id), 1)[0].image_id == image_id
    built = meta_cls.read(sidecar_path(big.index_file)).built_at
    new = _unlabelled(store)
    for image_id in new:
        store.set_label(image_id, "porous", source="expert")
    big.notify_labelled(new)
    run_job(big.rebuild_index())  # background rebuild, swapped in under the searcher's lock
    assert isinstance(big.searcher.index, kind) and set(new) <= set(big.searcher.index.ids.tolist())
    big.searcher.close()
    again = Classifier(store, encoder=encoder)
    run_job(again.prepare())
    assert isinstance(again.searcher.index, kind) and len(again.searcher.index) == 5 * PER_CLASS + len(new)
    assert meta_cls.read(sidecar_path(again.index_file)).built_at >= built
    again.searcher.close()
    data = again.index_file.read_bytes()
    again.index_file.write_bytes(data[: len(data) // 2])  # a truncated index: rebuilt, never served
    third = Classifier(store, encoder=encoder)
    run_job(third.prepare())
    assert isinstance(third.searcher.index, kind) and third.index_file.stat().st_size == len(data)
    third.searcher.close()
