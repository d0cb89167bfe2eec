"""Calibration, novelty, label errors and the labelling queue on synthetic embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from nmid_desktop.core.errors import LabelError, NmidError
from nmid_desktop.predict.active import diverse_order, next_to_label
from nmid_desktop.predict.calibration import (
    CalibrationCache,
    apply_temperature,
    calibrate_ranking,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    knn_oof_probabilities,
    reliability_bins,
)
from nmid_desktop.predict.label_errors import rank_label_issues
from nmid_desktop.predict.novelty import NoveltyModel
from nmid_desktop.predict.ranking import Ranking
from nmid_desktop.predict.trust import TrustModel


def blobs(rng: np.random.Generator, n_per: int = 40, n_classes: int = 3, dim: int = 16, spread: float = 0.25):
    """L2-normalised Gaussian blobs around orthogonal centres: (vectors (N, dim), labels)."""
    centres = np.eye(dim)[:n_classes]
    x = np.concatenate([c + spread * rng.normal(size=(n_per, dim)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = [f"c{i}" for i in range(n_classes) for _ in range(n_per)]
    return x.astype(np.float32), labels


def test_ece_matches_a_hand_computed_value() -> None:
    # Bin [0.8, 0.867): two at 0.8, one right -> |0.5 - 0.8| ; bin with 1.0: one at 1.0, right -> 0.
    conf = [0.8, 0.8, 1.0]
    correct = [True, False, True]
    assert expected_calibration_error(conf, correct) == pytest.approx((2 * 0.3 + 0) / 3)
    bins = reliability_bins(conf, correct)
    assert len(bins) == 15 and sum(b.count for b in bins) == 3 and bins[-1].count == 1  # 1.0 in the last bin
    with pytest.raises(ValueError):
        expected_calibration_error([0.5], [True, False])


def test_temperature_fixes_overconfidence_and_keeps_the_ranking() -> None:
    rng = np.random.default_rng(0)
    n, c = 3000, 4
    truth = rng.integers(0, c, n)
    # Honest 70 % accuracy but the predictor says ~97 %.
    pred = np.where(rng.random(n) < 0.7, truth, (truth + rng.integers(1, c, n)) % c)
    probs = np.full((n, c), 0.01)
    probs[np.arange(n), pred] = 0.97
    t = fit_temperature(probs, truth)
    assert t > 1.5  # softened
    scaled = apply_temperature(probs, t)
    assert np.array_equal(scaled.argmax(1), probs.argmax(1))
    before = expected_calibration_error(probs.max(1), pred == truth)
    after = expected_calibration_error(scaled.max(1), pred == truth)
    assert before > 0.2 and after < 0.03


def test_knn_leave_one_out_never_votes_for_itself() -> None:
    x = np.array([[1, 0], [0.99, 0.141], [0, 1], [0.141, 0.99]], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = ["a", "a", "b", "b"]
    oof = knn_oof_probabilities(x, labels, ["a", "b"], k=1)
    assert list(oof.argmax(1)) == [0, 0, 1, 1]
    # A lone mislabelled point is out-voted by its neighbours once it cannot vote for itself.
    oof = knn_oof_probabilities(x, ["a", "b", "b", "b"], ["a", "b"], k=1)
    assert oof[1].argmax() == 0


def test_calibration_cache_refits_only_when_the_labelled_set_changes() -> None:
    x, labels = blobs(np.random.default_rng(1))
    ids = list(range(len(labels)))
    cache = CalibrationCache()
    first = cache.get("knn", ids, x, labels, encoder_key="e", k=5)
    assert cache.get("knn", ids, x, labels, encoder_key="e", k=5) is first and cache.fits == 1
    changed = list(labels)
    changed[0] = "c1"
    second = cache.get("knn", ids, x, changed, encoder_key="e", k=5)
    assert second is not first and second.key != first.key and cache.fits == 2
    cal = fit_calibration("logreg", ids, x, labels, k=5)
    assert cal.oof.shape == (len(labels), 3) and cal.k == 0 and 0.25 <= cal.temperature <= 20
    with pytest.raises(LabelError):
        fit_calibration("knn", ids, x, ["c0"] * len(labels))


def test_novelty_flags_an_unknown_cluster_and_not_known_images() -> None:
    rng = np.random.default_rng(2)
    x, labels = blobs(rng, n_per=60, n_classes=4, spread=0.15)
    library, lib_labels = x[labels != np.array("c3")], [c for c in labels if c != "c3"]
    model = NoveltyModel(library, lib_labels)
    # Fresh draws of known classes: rarely flagged. Images of the fourth class: always.
    known, known_labels = blobs(np.random.default_rng(3), n_per=60, n_classes=3, spread=0.15)
    novel = x[np.array(labels) == "c3"]
    known_scores = model.scores(known, library, known_labels)
    novel_scores = model.scores(novel, library, ["c0"] * len(novel))
    assert (known_scores > model.threshold).mean() <= 0.1
    assert (novel_scores > model.threshold).mean() >= 0.9
    one = model.score(novel[0] @ library.T, "c0")
    assert one.novel and one.text.startswith("unlike your library: nearest ") and "typical" in one.text
    assert one.reference == "c0" and one.nearest < one.typical


def test_trust_model_assess_calibrates_and_scores() -> None:
    x, labels = blobs(np.random.default_rng(4))
    model = TrustModel(range(len(labels)), x, labels, encoder_key="e")
    raw = Ranking.from_scores({"c0": 0.98, "c1": 0.01, "c2": 0.01}, predictor="knn")
    out = model.assess(raw, x[0], k=5, exclude_ids=[0])
    assert out.label == "c0" and out.raw is raw and out.temperature != 1.0
    assert out.ranking.labels == raw.labels and abs(sum(p for _, p in out.ranking.items) - 1) < 1e-6
    assert not out.novelty.novel and set(out.to_dict()) >= {"label", "confidence", "novelty"}
    assert calibrate_ranking(raw, None) is raw


def test_label_issues_find_planted_flips() -> None:
    rng = np.random.default_rng(5)
    x, labels = blobs(rng, n_per=50, n_classes=3, spread=0.2)
    flipped = [3, 60, 120, 140]
    noisy = list(labels)
    for i in flipped:
        noisy[i] = "c1" if labels[i] != "c1" else "c2"
    classes = ["c0", "c1", "c2"]
    oof = fit_calibration("logreg", range(len(noisy)), x, noisy).oof
    suspects = rank_label_issues(list(range(len(noisy))), noisy, oof, classes)
    top = {s.image_id for s in suspects[: len(flipped)]}
    assert top == set(flipped)
    assert all(s.suggested == labels[s.image_id] for s in suspects[: len(flipped)])
    everyone = rank_label_issues(list(range(len(noisy))), noisy, oof, classes, include_unflagged=True)
    assert len(everyone) == len(noisy) and everyone[0].score >= everyone[-1].score
    with pytest.raises(LabelError):
        rank_label_issues([0], ["zz"], np.array([[0.5, 0.5]]), ["a", "b"])


def test_labelling_queue_puts_uncertain_first_without_near_copies() -> None:
    rng = np.random.default_rng(6)
    x, labels = blobs(rng, n_per=30, n_classes=2, spread=0.2)
    # Pool: ten copies of one image midway between the classes, plus a few others.
    mid = (np.eye(16)[0] + np.eye(16)[1]) / np.sqrt(2)
    copies = mid + 0.001 * rng.normal(size=(10, 16))
    other = np.eye(16)[0] + 0.7 * np.eye(16)[1] + 0.05 * rng.normal(size=(3, 16))
    easy = np.eye(16)[0] + 0.2 * rng.normal(size=(10, 16))
    pool = np.concatenate([copies, other, easy])
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    queue = next_to_label(list(range(100, 100 + len(pool))), pool.astype(np.float32), x, labels)
    first = [c.image_id for c in queue[:4]]
    assert sum(1 for i in first if i < 110) == 1  # one of the copies, then something else
    assert sorted(c.image_id for c in queue) == list(range(100, 100 + len(pool)))
    assert sorted(diverse_order(np.zeros(5), pool[:5]).tolist()) == [0, 1, 2, 3, 4]


def test_group_folds_keep_groups_together_and_reject_too_few() -> None:
    from nmid_desktop.evaluation.splits import group_folds

    labels = ["a", "b"] * 20
    groups = [f"g{i // 4}" for i in range(40)]
    masks = group_folds(labels, groups, 5, seed=0)
    assert sum(int(m.sum()) for m in masks) == 40
    for m in masks:
        tested = {g for g, t in zip(groups, m, strict=True) if t}
        trained = {g for g, t in zip(groups, m, strict=True) if not t}
        assert tested and not tested & trained
    with pytest.raises(NmidError, match="only 2 groups"):
        group_folds(labels, ["x", "y"] * 20, 5)


def test_image_groups_from_folder_name_and_manifest(tmp_path) -> None:
    from PIL import Image

    from nmid_desktop.core.importer import import_folder
    from nmid_desktop.core.jobs import run_job
    from nmid_desktop.core.store import open_library
    from nmid_desktop.evaluation.splits import image_groups

    rng = np.random.default_rng(0)
    for specimen in ("S1", "S2"):
        for cls in ("a", "b"):
            folder = tmp_path / "data" / specimen / cls
            folder.mkdir(parents=True)
            for n in range(2):
                pixels = rng.integers(0, 255, (16, 16), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{specimen}_{cls}{n}.png")
    with open_library(tmp_path / "lib") as store:
        for specimen in ("S1", "S2"):
            run_job(import_folder(store, tmp_path / "data" / specimen))
        records = store.images()
        ids = [r.id for r in records]
        expected = [r.original_name.split("_")[0] for r in records]
        assert [g.rsplit("/", 1)[-1].rsplit("\\", 1)[-1] for g in image_groups(store, ids, "folder:2")] == expected
        assert image_groups(store, ids, r"name:^(S\d)_") == expected
        manifest = tmp_path / "m.csv"
        manifest.write_text("name,session\n" + "".join(f"{r.original_name},day{r.original_name[1]}\n" for r in records))
        assert image_groups(store, ids, f"manifest:{manifest}:session") == [f"day{g[1]}" for g in expected]
        with pytest.raises(NmidError, match="no match in file name"):
            image_groups(store, ids, r"name:^X(\d)")
        with pytest.raises(NmidError, match="folder:N, name:REGEX or manifest"):
            image_groups(store, ids, "column")
        with pytest.raises(NmidError, match="needs a path/file/name column and a 'batch' column"):
            image_groups(store, ids, f"manifest:{manifest}:batch")
