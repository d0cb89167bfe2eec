"""Local prediction: demonstration retrieval, a kNN vote and a logistic probe, behind ``Classifier``."""

from nmid_desktop.predict.knn import KnnPredictor
from nmid_desktop.predict.probe import ProbePredictor
from nmid_desktop.predict.ranking import Ranking, uncertainty_order
from nmid_desktop.predict.retrieval import STRATEGIES, Demonstration, DemoPool, similar
from nmid_desktop.predict.service import LOCAL_PREDICTORS, Classifier

__all__ = [
    "LOCAL_PREDICTORS",
    "STRATEGIES",
    "Classifier",
    "DemoPool",
    "Demonstration",
    "KnnPredictor",
    "ProbePredictor",
    "Ranking",
    "similar",
    "uncertainty_order",
]
