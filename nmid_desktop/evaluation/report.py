"""Reports of an evaluation: a plain-text table, a JSON document and a PNG figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nmid_desktop.core.errors import NmidError
from nmid_desktop.evaluation.runner import ConfigResult, EvaluationResult

_COLUMNS = ("encoder", "predictor", "strategy", "K", "top1", "top2", "top3", "top5", "macroF1", "ECE", "ECEcal")


def _row(r: ConfigResult) -> list[str]:
    top = r.metrics.top_k
    return [
        r.config.encoder,
        r.config.predictor,
        r.config.strategy or "-",
        str(r.config.k) if r.config.k else "all",
        *(f"{top[k]:.4f}" if k in top else "" for k in (1, 2, 3, 5)),
        f"{r.metrics.macro_f1:.4f}",
        f"{r.ece:.4f}",
        "-" if r.ece_calibrated is None else f"{r.ece_calibrated:.4f}",
    ]


def sorted_results(result: EvaluationResult) -> list[ConfigResult]:
    """Results in reading order: encoder, predictor, strategy, K."""
    return sorted(
        result.results,
        key=lambda r: (r.config.encoder, r.config.predictor, r.config.strategy or "", r.config.k or 10**9),
    )


def format_table(result: EvaluationResult) -> str:
    """A fixed-width table, one row per configuration, with a header and the best row named."""
    rows = [list(_COLUMNS)] + [_row(r) for r in sorted_results(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    numeric = {3, 4, 5, 6, 7, 8, 9, 10}
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    split = result.split + (f" ({result.test_fraction:.0%} hardest per class)" if result.split == "hard" else "")
    if result.split in ("kfold", "group-kfold"):
        split += f" ({result.n_folds} folds, pooled)"
    head = [
        f"split: {split}; {result.n_images} labelled images, {result.n_test} tested, "
        f"{len(result.classes)} classes; seed {result.seed}",
    ]
    best = result.best()
    tail = [f"best: {best.config.label}: top-1 {best.metrics.top1:.4f}, macro-F1 {best.metrics.macro_f1:.4f}"]
    tail.append("ECE: expected calibration error of top-1 confidence (15 bins); ECEcal: after temperature "
                "scaling fitted on each training part's out-of-fold predictions, as the window calibrates")
    tail += [f"note: {note}" for note in result.notes]
    return "\n".join(head + lines + tail)


def to_dict(result: EvaluationResult, *, per_image: bool = False) -> dict[str, Any]:
    """A JSON-ready document: the run's settings and every configuration's full metrics."""
    configs = []
    for r in sorted_results(result):
        entry: dict[str, Any] = {
            "encoder": r.config.encoder,
            "predictor": r.config.predictor,
            "strategy": r.config.strategy,
            "k": r.config.k,
            "seconds": round(r.seconds, 4),
            "ece": round(r.ece, 5),
            "ece_calibrated": None if r.ece_calibrated is None else round(r.ece_calibrated, 5),
            **r.metrics.to_dict(),
        }
        if per_image:
            entry["predictions"] = [
                {"image_id": i, "true": t, "predicted": p} for i, t, p in zip(r.image_ids, r.true_labels, r.predicted, strict=True)
            ]
        configs.append(entry)
    best = result.best()
    return {
        "split": result.split,
        "seed": result.seed,
        "test_fraction": result.test_fraction,
        "folds": result.n_folds,
        "n_images": result.n_images,
        "n_test": result.n_test,
        "classes": result.classes,
        "encoders": result.encoders,
        "library": result.library,
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "notes": result.notes,
        "best": {"encoder": best.config.encoder, "predictor": best.config.predictor,
                 "strategy": best.config.strategy, "k": best.config.k, "top1": best.metrics.top1},
        "configurations": configs,
    }


def write_json(result: EvaluationResult, path: Path, *, per_image: bool = True) -> Path:
    """Write :func:`to_dict` (with per-image predictions) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(result, per_image=per_image), indent=1), encoding="utf-8")
    return path


def write_figure(result: EvaluationResult, path: Path) -> Path:
    """A PNG: top-1 accuracy against K for every (encoder, predictor, strategy), and the best
    configuration's confusion matrix. matplotlib is imported here, with the Agg backend, so
    that nothing else pays for it and no display is needed."""
    try:
        import matplotlib
    except ImportError as exc:
        raise NmidError("--figure needs matplotlib (pip install 'nmid-desktop[plot]')") from exc

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_k, ax_cm, ax_rel) = plt.subplots(1, 3, figsize=(19, 6.5), gridspec_kw={"width_ratios": [1.25, 1, 1]})
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    flat: list[tuple[str, float]] = []
    for r in result.results:
        if r.config.k is None:
            flat.append((f"{r.config.encoder} {r.config.predictor}", r.metrics.top1))
        else:
            series.setdefault((r.config.encoder, r.config.predictor, r.config.strategy or ""), []).append(
                (r.config.k, r.metrics.top1)
            )
    ks = sorted({k for points in series.values() for k, _ in points}) or [1]
    for (encoder, predictor, strategy), points in sorted(series.items()):
        points.sort()
        style = "-" if strategy == "similarity" else "--"
        ax_k.plot([k for k, _ in points], [a for _, a in points], style, marker="o", label=f"{encoder} {predictor} {strategy}")
    for name, acc in flat:  # predictors without demonstrations do not depend on K: a level line
        ax_k.plot([ks[0], ks[-1]], [acc, acc], ":", label=f"{name} (all training images)")
    ax_k.set_xlabel("K (demonstrations)")
    ax_k.set_ylabel("top-1 accuracy")
    ax_k.set_xticks(ks)
    ax_k.set_title(f"top-1 vs K ({result.split} split, {result.n_test} test images)")
    ax_k.grid(alpha=0.3)
    # Below the plot, so that no curve is hidden behind it whatever the accuracies are.
    ax_k.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)

    best = result.best()
    cm = best.metrics.confusion
    ax_cm.imshow(cm, cmap="Blues")
    names = best.metrics.classes
    ax_cm.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax_cm.set_yticks(range(len(names)), names, fontsize=8)
    ax_cm.set_xlabel("predicted")
    ax_cm.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax_cm.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                           color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax_cm.set_title(f"best: {best.config.label}\ntop-1 {best.metrics.top1:.3f}", fontsize=9)
    _reliability(ax_rel, window_config(result))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def window_config(result: EvaluationResult, k: int = 5) -> ConfigResult:
    """The configuration the window shows (kNN over K similar demonstrations), else the best one."""
    knn = [r for r in result.results if r.config.predictor == "knn" and r.config.strategy == "similarity"
           and r.calibrated_confidences is not None]
    if not knn:
        return result.best()
    return min(knn, key=lambda r: (abs((r.config.k or 0) - k), r.config.k or 0))


def _reliability(ax: Any, r: ConfigResult) -> None:
    """A reliability diagram: accuracy per confidence bin, raw and calibrated, against the diagonal."""
    from nmid_desktop.predict.calibration import reliability_bins

    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    series = [("raw", r.confidences, r.ece, "tab:red")]
    if r.calibrated_confidences is not None and r.ece_calibrated is not None:
        series.append(("calibrated", r.calibrated_confidences, r.ece_calibrated, "tab:blue"))
    for name, conf, ece, color in series:
        bins = [b for b in reliability_bins(conf, r.correct) if b.count]
        ax.plot([b.confidence for b in bins], [b.accuracy for b in bins], "-o", color=color,
                label=f"{name} (ECE {ece:.3f})")
        for b in bins:
            ax.annotate(str(b.count), (b.confidence, b.accuracy), fontsize=6, color=color,
                        textcoords="offset points", xytext=(3, -8))
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("top-1 confidence (bin mean; numbers: images)")
    ax.set_ylabel("accuracy in bin")
    ax.set_title(f"reliability: {r.config.label}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
