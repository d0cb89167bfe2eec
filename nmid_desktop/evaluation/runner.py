"""Ablations in one run: encoder x predictor x sampling strategy x K, on a library's labels.

For every encoder the labelled images are embedded through the library's cache
(``ml.embed.embed_images``: a second run only reads the cache). For every split
(the hard split, or each fold of a stratified k-fold) the training part becomes a
demonstration pool searched exactly, and every test image is classified by every
configuration. Demonstrations come from the training part only.

Predictors are looked up in :data:`PREDICTORS` (name -> :class:`PredictorSpec`), so
another predictor (the LMM) plugs in with :func:`register_predictor`, called where a command is
composed (the runner never imports the model code), without
touching the runner. A predictor that uses demonstrations runs once per
(strategy, K); one that does not (the logistic probe, fitted on the whole training
part) runs once and is reported with strategy ``-`` and K ``all``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nmid_desktop.core.errors import ConfigError, LabelError
from nmid_desktop.core.jobs import Job, Progress
from nmid_desktop.core.store.base import Store
from nmid_desktop.evaluation import splits
from nmid_desktop.evaluation.metrics import Metrics, compute_metrics
from nmid_desktop.index.searcher import Searcher
from nmid_desktop.predict.calibration import calibrate_ranking, expected_calibration_error, fit_calibration
from nmid_desktop.predict.knn import KnnPredictor
from nmid_desktop.predict.probe import ProbePredictor
from nmid_desktop.predict.ranking import Ranking
from nmid_desktop.predict.retrieval import STRATEGIES, Demonstration, DemoPool, similar

DEFAULT_KS = (1, 3, 5, 10)
SPLITS = ("hard", "kfold", "group-kfold", "stored")


@dataclass(frozen=True)
class TrainData:
    """The training part of one split, for one encoder.

    Attributes:
        encoder: Encoder name.
        encoder_key: Encoder cache key (name + weights sha256).
        ids: Training image ids, shape (N,).
        labels: N training labels.
        vectors: Shape (N, D), L2-normalised embeddings.
        classes: Every class of the evaluation, sorted.
        searcher: Exact search over the training vectors.
        pool: The training labels as a demonstration pool.
        store: The library (predictors that need pixels read images through it).
        fold: Index of the split (0 for the hard split).
        seed: The run's seed.
    """

    encoder: str
    encoder_key: str
    ids: np.ndarray
    labels: list[str]
    vectors: np.ndarray
    classes: list[str]
    searcher: Searcher
    pool: DemoPool
    store: Store | None
    fold: int
    seed: int


@dataclass(frozen=True)
class QueryData:
    """Test images of one split and, for demonstration-based predictors, their demonstrations.

    Attributes:
        ids: Test image ids, shape (M,).
        vectors: Shape (M, D).
        demonstrations: Per test image, its K demonstrations (None for predictors without them).
        strategy: Sampling strategy of the demonstrations, or None.
        k: K, or None.
    """

    ids: np.ndarray
    vectors: np.ndarray
    demonstrations: list[list[Demonstration]] | None = None
    strategy: str | None = None
    k: int | None = None


PredictFn = Callable[[TrainData, QueryData], Sequence[Ranking]]


@dataclass(frozen=True)
class PredictorSpec:
    """A predictor the runner can evaluate.

    Attributes:
        name: Registry name (``knn``, ``logreg``, ``lmm``).
        predict: Returns one ranking per query image, in order.
        uses_demonstrations: True when it needs retrieved demonstrations (run per strategy and K).
        description: One line for ``nmid evaluate --help``.
    """

    name: str
    predict: PredictFn
    uses_demonstrations: bool = True
    description: str = ""


PREDICTORS: dict[str, PredictorSpec] = {}


def register_predictor(spec: PredictorSpec) -> None:
    """Add (or replace) a predictor in the registry."""
    PREDICTORS[spec.name] = spec


def _predict_knn(train: TrainData, queries: QueryData) -> list[Ranking]:
    knn = KnnPredictor()
    if queries.demonstrations is None:
        raise ConfigError("the knn predictor needs demonstrations")
    return [knn.rank(demos, train.classes) for demos in queries.demonstrations]


def _predict_logreg(train: TrainData, queries: QueryData) -> list[Ranking]:
    probe = ProbePredictor(seed=train.seed).fit(train.vectors, train.labels)
    return probe.rank_many(queries.vectors)


register_predictor(PredictorSpec("knn", _predict_knn, True, "similarity-weighted kNN vote over the K demonstrations"))
register_predictor(PredictorSpec("logreg", _predict_logreg, False, "logistic-regression probe on all training embeddings"))

@dataclass(frozen=True)
class ConfigKey:
    """One evaluated configuration (``strategy`` and ``k`` are None for predictors without demonstrations)."""

    encoder: str
    predictor: str
    strategy: str | None
    k: int | None

    @property
    def label(self) -> str:
        """Short text, e.g. ``efficientnet-lite0-imagenet knn similarity K=5``."""
        return f"{self.encoder} {self.predictor} {self.strategy or '-'} K={self.k if self.k else 'all'}"


@dataclass
class ConfigResult:
    """Metrics of one configuration, pooled over folds, with per-image predictions."""

    config: ConfigKey
    metrics: Metrics
    image_ids: list[int] = field(default_factory=list)
    true_labels: list[str] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)
    seconds: float = 0.0
    confidences: list[float] = field(default_factory=list)
    calibrated_confidences: list[float] | None = None  # None: the predictor has no calibration

    @property
    def ece(self) -> float:
        """Expected calibration error of the raw top-1 confidences (15 bins)."""
        return expected_calibration_error(self.confidences, self.correct)

    @property
    def ece_calibrated(self) -> float | None:
        """ECE after calibration on the training part's out-of-fold predictions, or None."""
        if self.calibrated_confidences is None:
            return None
        return expected_calibration_error(self.calibrated_confidences, self.correct)

    @property
    def correct(self) -> list[bool]:
        """Whether each top-1 prediction was right."""
        return [t == p for t, p in zip(self.true_labels, self.predicted, strict=False)]


@dataclass
class EvaluationResult:
    """Everything one ``nmid evaluate`` run measured."""

    results: list[ConfigResult]
    split: str
    seed: int
    classes: list[str]
    n_images: int
    n_test: int
    n_folds: int
    test_fraction: float | None
    encoders: dict[str, str]  # name -> key
    library: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def best(self, predictors: Sequence[str] | None = None, encoder: str | None = None) -> ConfigResult:
        """The configuration with the highest top-1 (then macro-F1), optionally restricted."""
        pool = [
            r
            for r in self.results
            if (predictors is None or r.config.predictor in predictors) and (encoder is None or r.config.encoder == encoder)
        ]
        if not pool:
            raise ConfigError("no evaluated configuration matches")
        return max(pool, key=lambda r: (r.metrics.top1, r.metrics.macro_f1))


@dataclass(frozen=True)
class EvalOptions:
    """What one run evaluates.

    Attributes:
        encoders: Encoder names.
        predictors: Predictor names from :data:`PREDICTORS`.
        strategies: Sampling strategies of the demonstrations.
        ks: Numbers of demonstrations.
        split: ``hard`` (hardest fraction per class), ``kfold`` (stratified) or ``stored``
            (the library's stored test split).
        folds: Folds for ``kfold``.
        test_fraction: Test share per class for ``hard``.
        seed: Seeds the split and the random strategy.
        include_synthetic: Add accepted synthetic images to every training part (never to tests).
        save_split: Store the hard split in the library (``store.set_split``).
        batch_size: Embedding batch size.
    """

    encoders: tuple[str, ...]
    predictors: tuple[str, ...] = ("knn", "logreg")
    strategies: tuple[str, ...] = STRATEGIES
    ks: tuple[int, ...] = DEFAULT_KS
    split: str = "hard"
    folds: int = 5
    test_fraction: float = splits.TEST_FRACTION
    seed: int = 0
    include_synthetic: bool = False
    save_split: bool = False
    batch_size: int = 64
    groups: str | None = None

    def validate(self) -> None:
        """Raise :class:`ConfigError` for the first invalid option."""
        if not self.encoders:
            raise ConfigError("name at least one encoder")
        unknown = [p for p in self.predictors if p not in PREDICTORS]
        if unknown or not self.predictors:
            raise ConfigError(f"unknown predictor {', '.join(unknown) or '(none)'}; known: {', '.join(PREDICTORS)}")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise ConfigError(f"unknown strategy {', '.join(bad) or '(none)'}; known: {', '.join(STRATEGIES)}")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError("K values must be at least 1")
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError("test fraction must be between 0 and 1")
        if self.split == "group-kfold" and not self.groups:
            raise ConfigError("--split group-kfold needs --groups (folder:N, name:REGEX or manifest:CSV:COLUMN)")


EncoderLoader = Callable[[str], Any]  # name -> Encoder (name, key, dim, embed)
Embedder = Callable[[Store, Any, Sequence[int]], Job[tuple[np.ndarray, np.ndarray]]]


def _default_loader(store: Store) -> EncoderLoader:
    def load(name: str) -> Any:
        from nmid_desktop.inference.loader import load_encoder

        return load_encoder(name, library=store.root)

    return load


def _default_embedder(store: Store, encoder: Any, ids: Sequence[int]) -> Job[tuple[np.ndarray, np.ndarray]]:
    from nmid_desktop.ml.embed import embed_images

    return embed_images(store, encoder, list(ids))


def _test_masks(store: Store, ids: np.ndarray, labels: list[str], opts: EvalOptions) -> Job[list[np.ndarray]]:
    if opts.split == "kfold":
        return splits.stratified_folds(labels, opts.folds, seed=opts.seed)
    if opts.split == "group-kfold":
        groups = splits.image_groups(store, ids.tolist(), opts.groups or "")
        return splits.group_folds(labels, groups, opts.folds, seed=opts.seed)
    if opts.split == "stored":
        stored = store.get_split()
        mask = np.array([stored.get(int(i)) == "test" for i in ids], dtype=bool)
        if not mask.any() or mask.all():
            raise ConfigError("the library has no stored test split (run `nmid evaluate --save-split` once)")
        return [mask]
    pixels = yield from splits.pixel_features(store, ids)
    hardness = splits.hardness_scores(pixels, labels, seed=opts.seed)
    mask = splits.hard_test_mask(hardness, labels, ids, test_fraction=opts.test_fraction)
    if opts.save_split:
        store.set_split({int(i): ("test" if m else "train") for i, m in zip(ids, mask, strict=True)})
    return [mask]


def evaluate(
    store: Store,
    options: EvalOptions,
    *,
    encoder_loader: EncoderLoader | None = None,
    embedder: Embedder | None = None,
) -> Job[EvaluationResult]:
    """Run every configuration on the library's reviewed labels.

    Ground truth is the accepted, non-synthetic labels (``store.labelled(include_pending=False)``).

    Args:
        store: The library.
        options: What to evaluate.
        encoder_loader: name -> encoder (default: ``inference.loader.load_encoder`` for this library).
        embedder: ``(store, encoder, ids) -> Job[(ids, vectors)]`` (default: the cached
            ``ml.embed.embed_images``).

    Yields:
        Progress while reading pixels, embedding and classifying (cancel points).

    Returns:
        The result of every configuration.
    """
    options.validate()
    started = time.perf_counter()
    load = encoder_loader or _default_loader(store)
    embed = embedder or _default_embedder
    labelled = store.labelled(include_pending=False, include_synthetic=False)
    if not labelled:
        raise LabelError("the library has no accepted labels to evaluate on")
    ids = np.array([i for i, _ in labelled], dtype=np.int64)
    labels = [label for _, label in labelled]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise LabelError("evaluation needs at least two classes")
    synthetic: list[tuple[int, str]] = []
    if options.include_synthetic:
        real = set(ids.tolist())
        synthetic = [(i, c) for i, c in store.labelled(include_pending=False, include_synthetic=True) if i not in real]
    encoders = [load(name) for name in options.encoders]  # fail fast, before any long work

    masks = yield from _test_masks(store, ids, labels, options)
    timings: dict[str, float] = {"split": time.perf_counter() - started}
    result = EvaluationResult(
        results=[],
        split=options.split,
        seed=options.seed,
        classes=classes,
        n_images=len(ids),
        n_test=int(sum(int(m.sum()) for m in masks)),
        n_folds=len(masks),
        test_fraction=options.test_fraction if options.split == "hard" else None,
        encoders={e.name: e.key for e in encoders},
        library=str(getattr(store, "root", "")),
        seconds=timings,
    )
    if synthetic:
        result.notes.append(f"{len(synthetic)} accepted synthetic images added to every training part")
    labels_arr = np.asarray(labels)
    syn_ids = np.array([i for i, _ in synthetic], dtype=np.int64)
    syn_labels = [c for _, c in synthetic]
    specs = [PREDICTORS[name] for name in options.predictors]
    collected: dict[ConfigKey, _Collected] = {}

    for encoder in encoders:
        t0 = time.perf_counter()
        wanted = np.concatenate([ids, syn_ids])
        got_ids, got_vectors = yield from embed(store, encoder, wanted.tolist())
        row = {int(i): n for n, i in enumerate(np.asarray(got_ids).tolist())}
        missing = [int(i) for i in wanted if int(i) not in row]
        if missing:
            raise LabelError(f"{len(missing)} images could not be embedded with {encoder.name} (first: id {missing[0]})")
        vectors = np.asarray(got_vectors, dtype=np.float32)[[row[int(i)] for i in wanted]]
        timings[f"embed {encoder.name}"] = time.perf_counter() - t0
        real_vectors, syn_vectors = vectors[: len(ids)], vectors[len(ids) :]

        for fold, test_mask in enumerate(masks):
            train = _train_data(encoder, fold, options.seed, classes, store,
                                np.concatenate([ids[~test_mask], syn_ids]),
                                [str(c) for c in labels_arr[~test_mask]] + syn_labels,
                                np.concatenate([real_vectors[~test_mask], syn_vectors]))
            test_ids = ids[test_mask]
            test_vectors = real_vectors[test_mask]
            test_true = [str(c) for c in labels_arr[test_mask]]
            demos = yield from _demonstrations(train, test_vectors, options)
            for spec in specs:
                runs = (
                    [(s, k) for s in options.strategies for k in sorted(set(options.ks))]
                    if spec.uses_demonstrations
                    else [(None, None)]
                )
                for strategy, k in runs:
                    key = ConfigKey(encoder.name, spec.name, strategy, k)
                    query = QueryData(
                        ids=test_ids,
                        vectors=test_vectors,
                        demonstrations=[d[:k] for d in demos[strategy]] if strategy is not None else None,
                        strategy=strategy,
                        k=k,
                    )
                    t1 = time.perf_counter()
                    rankings = list(spec.predict(train, query))
                    if len(rankings) != len(test_ids):
                        raise ConfigError(f"predictor {spec.name} returned {len(rankings)} rankings for {len(test_ids)} images")
                    got = collected.setdefault(key, _Collected())
                    got.ids += test_ids.tolist()
                    got.true += test_true
                    got.rankings += rankings
                    calibrated = _calibrated(spec.name, strategy, k, train, rankings)
                    if calibrated is None:
                        got.uncalibrated = True
                    else:
                        got.calibrated += calibrated
                    got.seconds += time.perf_counter() - t1
                    yield Progress(len(collected), 0, f"{key.label} (fold {fold + 1}/{len(masks)})")

    for key, got in collected.items():
        result.results.append(
            ConfigResult(
                config=key,
                metrics=compute_metrics(got.true, got.rankings, classes),
                image_ids=got.ids,
                true_labels=got.true,
                predicted=[r.top1 for r in got.rankings],
                seconds=got.seconds,
                confidences=[r.confidence for r in got.rankings],
                calibrated_confidences=None if got.uncalibrated else [r.confidence for r in got.calibrated],
            )
        )
    timings["total"] = time.perf_counter() - started
    return result


@dataclass
class _Collected:
    ids: list[int] = field(default_factory=list)
    true: list[str] = field(default_factory=list)
    rankings: list[Ranking] = field(default_factory=list)
    calibrated: list[Ranking] = field(default_factory=list)
    uncalibrated: bool = False
    seconds: float = 0.0


def _calibrated(
    predictor: str, strategy: str | None, k: int | None, train: TrainData, rankings: Sequence[Ranking]
) -> list[Ranking] | None:
    """The rankings calibrated as the window calibrates them, fitted on the training part only.

    Only the local predictors as the window runs them (kNN over similarity-retrieved
    demonstrations, the probe) have a calibration; others give None.
    """
    window_knn = predictor == "knn" and strategy == "similarity" and bool(k)
    if not (window_knn or predictor == "logreg"):
        return None
    try:
        cal = fit_calibration(predictor, train.ids, train.vectors, train.labels,
                              encoder_key=train.encoder_key, k=k or 5, seed=train.seed)
    except LabelError:
        return None
    return [calibrate_ranking(r, cal) for r in rankings]


def _train_data(
    encoder: Any, fold: int, seed: int, classes: list[str], store: Store,
    ids: np.ndarray, labels: list[str], vectors: np.ndarray,
) -> TrainData:
    searcher = Searcher(None, vectors.shape[1])  # exact: the evaluation measures predictors, not Annoy
    searcher.add(ids, vectors)
    return TrainData(
        encoder=encoder.name,
        encoder_key=encoder.key,
        ids=ids,
        labels=labels,
        vectors=vectors,
        classes=classes,
        searcher=searcher,
        pool=DemoPool(labels=dict(zip(ids.tolist(), labels, strict=True))),
        store=store,
        fold=fold,
        seed=seed,
    )


def _demonstrations(
    train: TrainData, test_vectors: np.ndarray, options: EvalOptions
) -> Job[dict[str, list[list[Demonstration]]]]:
    """Per strategy, the max(K) demonstrations of every test image; smaller K take a prefix.

    Random draws are seeded per (seed, fold, test image), so every encoder and predictor sees
    the same random demonstrations (common random numbers make the comparison fairer), and
    the K demonstrations are a prefix of the K' > K ones.
    """
    if not any(PREDICTORS[p].uses_demonstrations for p in options.predictors):
        return {}
    k_max = max(options.ks)
    out: dict[str, list[list[Demonstration]]] = {}
    for strategy in options.strategies:
        demos = []
        for n, q in enumerate(test_vectors):
            rng = np.random.default_rng([options.seed, train.fold, n])
            demos.append(similar(q, k_max, strategy, searcher=train.searcher, pool=train.pool, rng=rng))
            if n % 200 == 0:
                yield Progress(n, len(test_vectors), f"retrieving {strategy} demonstrations ({train.encoder})")
        out[strategy] = demos
    return out
