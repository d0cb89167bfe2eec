"""Evaluation: the hard split and k-fold, metrics, ablation runs and their reports (``nmid evaluate``)."""
