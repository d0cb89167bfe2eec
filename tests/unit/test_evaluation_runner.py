"""The ablation runner and its reports on a tiny synthetic library (real store, real importer)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nmid_desktop.core.errors import ConfigError
from nmid_desktop.core.images import model_input
from nmid_desktop.core.importer import import_folder
from nmid_desktop.core.jobs import Progress, run_job
from nmid_desktop.core.store import ImageFilter, open_library
from nmid_desktop.evaluation import report
from nmid_desktop.evaluation.runner import PREDICTORS, EvalOptions, PredictorSpec, evaluate, register_predictor
from nmid_desktop.predict.ranking import Ranking

CLASSES = {"dark": 60, "mid": 128, "bright": 196}


class HistogramEncoder:
    """A tiny real encoder for tests: a 32-bin grey-level histogram, L2-normalised."""

    name = "histogram"
    key = "histogram@test"
    dim = 32

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = np.stack([np.histogram(im, bins=32, range=(0, 256))[0].astype(np.float32) for im in images])
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _embed(store, encoder, ids):
    """Embed library images the way encoders see them (crop box applied), caching nothing."""
    records = {r.id: r for r in store.images(ImageFilter(ids=list(ids)))}
    images = [model_input(records[i].path, records[i].page, records[i].crop_box) for i in ids]
    yield Progress(len(ids), len(ids), "embedded")
    return np.asarray(ids, dtype=np.int64), encoder.embed(images)


def _make_library(root: Path):
    folder = root / "data"
    rng = np.random.default_rng(0)
    for name, level in CLASSES.items():
        (folder / name).mkdir(parents=True)
        for i in range(20):
            # Overlapping brightness distributions so that nothing is perfect by construction.
            pixels = np.clip(rng.normal(level + rng.normal(0, 25), 30, size=(48, 48)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{name}_{i:02d}.png")
    store = open_library(root / "lib")
    run_job(import_folder(store, folder, detect_bar=False))
    return store


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory):
    store = _make_library(tmp_path_factory.mktemp("runner"))
    yield store
    store.close()


def _options(**kw) -> EvalOptions:
    base = dict(encoders=("histogram",), predictors=("knn", "logreg"), strategies=("similarity", "random"), ks=(1, 3, 5))
    base.update(kw)
    return EvalOptions(**base)


def _run(store, **kw):
    return run_job(evaluate(store, _options(**kw), encoder_loader=lambda name: HistogramEncoder(), embedder=_embed))


def test_runner_evaluates_every_configuration_on_the_hard_split(library, tmp_path: Path) -> None:
    result = _run(library)
    keys = {(r.config.predictor, r.config.strategy, r.config.k) for r in result.results}
    assert keys == {("knn", s, k) for s in ("similarity", "random") for k in (1, 3, 5)} | {("logreg", None, None)}
    assert result.n_images == 60 and result.n_test == 6  # 10 % of each class of 20
    assert result.classes == sorted(CLASSES)
    for r in result.results:
        assert r.metrics.n == 6 and len(r.predicted) == 6
        assert sorted(set(r.true_labels)) == sorted(CLASSES) and r.true_labels.count("dark") == 2
        assert r.metrics.top_k[5] == 1.0  # three classes: the full ranking always holds the truth
    # Brightness histograms separate the classes far better than random demonstrations do.
    sim5 = next(r for r in result.results if r.config.strategy == "similarity" and r.config.k == 5)
    assert sim5.metrics.top1 >= 0.5
    # The same seed gives the same split and the same random demonstrations.
    again = _run(library)
    assert [(r.config, r.predicted) for r in report.sorted_results(again)] == [
        (r.config, r.predicted) for r in report.sorted_results(result)
    ]

    table = report.format_table(result)
    assert "histogram" in table and "logreg" in table and "best:" in table
    assert len([line for line in table.splitlines() if line.startswith("histogram")]) == 7
    out = report.write_json(result, tmp_path / "r.json")
    data = json.loads(out.read_text())
    assert len(data["configurations"]) == 7
    assert data["configurations"][0]["confusion"] and "per_class" in data["configurations"][0]
    assert len(data["configurations"][0]["predictions"]) == 6
    png = report.write_figure(result, tmp_path / "r.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 400


def test_runner_kfold_tests_every_image_once(library) -> None:
    result = _run(library, split="kfold", folds=4, predictors=("knn",), strategies=("similarity",), ks=(3,))
    (only,) = result.results
    assert result.n_folds == 4 and only.metrics.n == 60
    assert sorted(only.image_ids) == sorted(i for i, _ in library.labelled())


def test_registered_predictor_gets_training_demonstrations_only(library) -> None:
    seen = []

    def spy(train, queries):
        train_ids = set(train.ids.tolist())
        for qid, demos in zip(queries.ids.tolist(), queries.demonstrations):
            assert qid not in train_ids
            assert len(demos) == queries.k and all(d.image_id in train_ids for d in demos)
        seen.append((queries.strategy, queries.k))
        return [Ranking.from_scores(dict.fromkeys(train.classes, 1 / 3), predictor="spy") for _ in queries.ids]

    register_predictor(PredictorSpec("spy", spy, uses_demonstrations=True))
    try:
        _run(library, predictors=("spy",), ks=(1, 2))
    finally:
        PREDICTORS.pop("spy")
    assert sorted(seen) == [("random", 1), ("random", 2), ("similarity", 1), ("similarity", 2)]


def test_runner_rejects_unknown_options(library) -> None:
    with pytest.raises(ConfigError, match="unknown predictor"):
        _run(library, predictors=("oracle",))
    with pytest.raises(ConfigError, match="strategy"):
        _run(library, strategies=("nearest",))
    with pytest.raises(ConfigError, match="no stored test split"):
        _run(library, split="stored")


def test_saved_hard_split_is_reused(tmp_path: Path) -> None:
    store = _make_library(tmp_path)
    try:
        first = _run(store, save_split=True, predictors=("logreg",))
        assert sum(1 for v in store.get_split().values() if v == "test") == 6
        stored = _run(store, split="stored", predictors=("logreg",))
        assert sorted(first.results[0].image_ids) == sorted(stored.results[0].image_ids)
    finally:
        store.close()
