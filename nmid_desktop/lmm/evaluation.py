"""The multimodal model as a predictor of ``nmid evaluate`` (the paper's experiment on the user's endpoint).

Importing this module registers ``lmm`` in :data:`nmid_desktop.evaluation.runner.PREDICTORS`
(the runner imports it as a plug-in). For every test image the model sees the K
demonstrations the runner retrieved from the training part, with their data bars
cropped by the library's boxes, and ranks the classes. Calls run on up to
``lmm.max_concurrency`` threads; spending is recorded in the library from the
calling thread, and the budget is checked before the run and before every call.

When the model gives no valid class (refusal, or a label outside the taxonomy
after one repair request) the local kNN vote over the same demonstrations stands,
as it does in ``nmid classify --predictor both``; the number of such fallbacks is
logged. Predictions made during an evaluation are not stored as predictions of
the images: they belong to the evaluation report.
"""

from __future__ import annotations

import logging

from nmid_desktop.core.config import load_settings
from nmid_desktop.core.errors import ConfigError, NmidError
from nmid_desktop.evaluation.runner import PredictorSpec, QueryData, TrainData, register_predictor
from nmid_desktop.lmm.client import LmmClient, LmmError, run_batch
from nmid_desktop.lmm.cost import BudgetExceeded, BudgetGuard, CostEstimate, PriceTable, check_budget
from nmid_desktop.lmm.images import ImageSource, encode_source, source_from_record
from nmid_desktop.lmm.parsing import ranking_from
from nmid_desktop.lmm.predict import LmmPrediction, estimate_predict, predict_encoded
from nmid_desktop.predict.knn import KnnPredictor
from nmid_desktop.predict.ranking import Ranking

log = logging.getLogger(__name__)


def predict_lmm(
    train: TrainData, queries: QueryData, *, client: LmmClient | None = None, prices: PriceTable | None = None
) -> list[Ranking]:
    """One ranking per test image, from the model and the runner's demonstrations.

    Args:
        train: The training part (its ``store`` supplies pixels and crop boxes; ``classes`` the taxonomy).
        queries: Test images and, per image, its demonstrations.
        client: The client (default: one for the configured endpoint).
        prices: The price table.

    Returns:
        Rankings over all classes, in the order of ``queries.ids``.

    Raises:
        NoEndpointError: When offline.
        BudgetExceeded: When the run would pass ``lmm.budget_usd``.
        LmmError: A fatal endpoint error (bad key, missing model).
    """
    store = train.store
    if store is None:
        raise ConfigError("the lmm predictor reads the images: it needs the library")
    if queries.demonstrations is None:
        raise ConfigError("the lmm predictor needs demonstrations")
    settings = load_settings()
    lmm = settings.lmm
    prices = prices or PriceTable.load()
    classes = list(train.classes)
    side, limit = lmm.image_max_side, settings.max_pixels

    def source(image_id: int) -> ImageSource:
        return source_from_record(store.get_image(int(image_id)), crop_data_bar=settings.crop_data_bar)

    work_items: list[tuple[ImageSource, list[tuple[ImageSource, str]]]] = [
        (source(qid), [(source(d.image_id), d.label) for d in demos])
        for qid, demos in zip(queries.ids.tolist(), queries.demonstrations, strict=True)
    ]
    estimates = [
        estimate_predict((q.width, q.height), [(d.width, d.height) for d, _ in demos], classes, settings, prices)
        for q, demos in work_items
    ]
    total = CostEstimate()
    for estimate in estimates:
        total.add(estimate)
    log.info("lmm evaluation (%s, K=%s): %s", queries.strategy, queries.k, total.summary())
    spent = store.total_cost()
    check_budget(total, spent, lmm.budget_usd)
    own_client = client is None
    client = client or LmmClient.from_settings(lmm)
    guard = BudgetGuard(lmm.budget_usd, spent)
    results: dict[int, LmmPrediction] = {}
    fatal: list[NmidError] = []
    stopped = False

    def admit(index: int) -> bool:
        nonlocal stopped
        if fatal:
            return False
        if guard.reserve(estimates[index].cost_usd):
            return True
        stopped = True
        return False

    def work(item: tuple[ImageSource, list[tuple[ImageSource, str]]]) -> LmmPrediction:
        query, demos = item
        encoded = [(encode_source(s, side, max_pixels=limit), label) for s, label in demos]
        return predict_encoded(client, encoded, encode_source(query, side, max_pixels=limit), classes, settings, prices=prices)

    try:
        for outcome in run_batch(work_items, work, max_workers=lmm.max_concurrency, admit=admit):
            if outcome.error is not None:
                guard.settle(estimates[outcome.index].cost_usd, 0.0)
                if (isinstance(outcome.error, LmmError) and outcome.error.fatal) or not isinstance(outcome.error, NmidError):
                    fatal.append(outcome.error)
                else:
                    log.warning("lmm evaluation, image %s: %s", queries.ids[outcome.index], outcome.error)
                continue
            prediction = outcome.value
            guard.settle(estimates[outcome.index].cost_usd, prediction.cost_usd or 0.0)
            if not prediction.cached:
                store.record_usage(
                    kind="predict", model=prediction.model, tokens_in=prediction.tokens_in,
                    tokens_out=prediction.tokens_out, cost_usd=prediction.cost_usd or 0.0,
                    images=len(prediction.demo_ids) + 1,
                )
            results[outcome.index] = prediction
    finally:
        if own_client:
            client.close()
    if fatal:
        raise fatal[0]
    if stopped:
        raise BudgetExceeded(
            f"the evaluation stopped at the budget of ${lmm.budget_usd:.2f} (setting lmm.budget_usd) "
            f"after {len(results)} of {len(work_items)} images"
        )
    return _rankings(results, queries, classes)


def _rankings(results: dict[int, LmmPrediction], queries: QueryData, classes: list[str]) -> list[Ranking]:
    knn = KnnPredictor()
    rankings: list[Ranking] = []
    fallbacks = 0
    for index, demos in enumerate(queries.demonstrations or []):
        prediction = results.get(index)
        demo_ids = tuple(int(d.image_id) for d in demos)
        if prediction is not None and prediction.valid and prediction.label:
            top = [name for name, _ in prediction.ranking]
            # Ranking(...) directly, not from_scores: ties must not reorder the model's ranking.
            items = tuple(ranking_from(top, prediction.confidence, classes))
            rankings.append(Ranking(items=items, predictor="lmm", demo_ids=demo_ids))
        else:
            fallbacks += 1
            local = knn.rank(demos, classes)
            rankings.append(Ranking(items=local.items, predictor="lmm", demo_ids=demo_ids))
    if fallbacks:
        log.warning("lmm evaluation: %d of %d images had no valid model answer; the kNN vote stands", fallbacks, len(rankings))
    return rankings


def _predict(train: TrainData, queries: QueryData) -> list[Ranking]:
    return predict_lmm(train, queries)


LMM_PREDICTOR = PredictorSpec(
    "lmm",
    _predict,
    True,
    "the multimodal model with the K demonstrations shown as (image, class) pairs (needs an endpoint; costs money)",
)


def register() -> None:
    """Add ``lmm`` to the evaluation's predictors (called where ``nmid evaluate`` is composed)."""
    register_predictor(LMM_PREDICTOR)


__all__ = ["LMM_PREDICTOR", "predict_lmm", "register"]
