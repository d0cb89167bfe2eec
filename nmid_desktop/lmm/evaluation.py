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
from nmid_desktop.core.errors import ConfigError
from nmid_desktop.core.jobs import run_job
from nmid_desktop.evaluation.runner import PredictorSpec, QueryData, TrainData, register_predictor
from nmid_desktop.lmm.client import LmmClient
from nmid_desktop.lmm.cost import BudgetExceeded, CostEstimate, PriceTable
from nmid_desktop.lmm.images import ImageSource, encode_source, source_from_record
from nmid_desktop.lmm.paid_batch import paid_calls, paid_session
from nmid_desktop.lmm.parsing import ranking_from
from nmid_desktop.lmm.predict import LmmPrediction, estimate_predict, predict_encoded
from nmid_desktop.lmm.usage import record_paid_call
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
    stopped = False

    def on_budget_stop() -> None:
        nonlocal stopped
        stopped = True

    failures: list[tuple[int, str]] = []
    with paid_session(lmm, total, spent, model_setting="lmm.vision_model", client=client) as session:

        def work(item: tuple[ImageSource, list[tuple[ImageSource, str]]]) -> LmmPrediction:
            query, demos = item
            encoded = [(encode_source(s, side, max_pixels=limit), label) for s, label in demos]
            return predict_encoded(
                session.client, encoded, encode_source(query, side, max_pixels=limit), classes, settings, prices=prices
            )

        def keep(index: int, prediction: LmmPrediction) -> tuple[LmmPrediction, str]:
            record_paid_call(store, "predict", prediction, cost_usd=prediction.cost_usd, images=len(prediction.demo_ids) + 1)
            return prediction, f"image {queries.ids[index]}"

        results = run_job(paid_calls(
            work_items, work, [e.cost_usd for e in estimates], lmm=lmm, spent=spent, token=None, failures=failures,
            failure_key=lambda i: int(queries.ids[i]), on_budget_stop=on_budget_stop, on_result=keep,
        ))
    for image_id, reason in failures:
        log.warning("lmm evaluation, image %s: %s", image_id, reason)
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
