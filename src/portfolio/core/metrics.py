"""Metrics with bootstrap 95% intervals and threshold selection, for classification and
regression. Estimator-agnostic: works on labels and scores only. Light (no plotting), so that
serving and monitoring can use it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn import metrics as skm

MetricFn = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class ThresholdPolicy:
    """How a classifier's decision threshold is chosen on out-of-fold validation predictions.

    ``max_f1``: the threshold that maximises F1.
    ``max_accuracy``: the threshold that maximises accuracy (balanced costs of both errors).
    ``min_recall``: the best-precision threshold among those reaching ``min_recall``.
    ``recall_precision``: two targets that must both hold on unseen rows, ``min_recall`` and
    ``min_precision``: the threshold whose smaller margin, counted in binomial standard errors
    (recall over the positives, precision over the flagged rows), is largest. Where the two
    trade off, this balances the two risks of missing a target on a new sample instead of
    meeting one exactly and leaving no margin.
    """

    kind: Literal["max_f1", "max_accuracy", "min_recall", "recall_precision"] = "max_f1"
    min_recall: float = 0.8
    min_precision: float = 0.5


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Log-odds of probabilities clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    return np.asarray(np.log(p / (1 - p)))


def choose_threshold(y: np.ndarray, proba: np.ndarray, policy: ThresholdPolicy) -> float:
    """Pick the decision threshold on validation scores according to ``policy``."""
    precision, recall, thresholds = skm.precision_recall_curve(y, proba)
    # precision/recall have one more entry than thresholds (the "predict nothing" end point).
    precision, recall = precision[:-1], recall[:-1]
    if policy.kind == "max_f1":
        f1 = np.divide(
            2 * precision * recall,
            precision + recall,
            out=np.zeros_like(precision),
            where=(precision + recall) > 0,
        )
        return float(thresholds[int(np.argmax(f1))])
    if policy.kind == "max_accuracy":
        # Counts at each threshold from the curve: true positives = recall x positives, predicted
        # positives = true positives / precision.
        positives = float(np.sum(y == 1))
        tp = recall * positives
        fp = np.divide(tp, precision, out=np.zeros_like(tp), where=precision > 0) - tp
        accuracy = (tp + (len(y) - positives - fp)) / len(y)
        return float(thresholds[int(np.argmax(accuracy))])
    if policy.kind == "recall_precision":
        return float(thresholds[int(np.argmax(_target_margins(y, precision, recall, policy)))])
    ok = recall >= policy.min_recall
    if not ok.any():
        return float(thresholds[0])
    candidates = np.where(ok)[0]
    best = candidates[np.argmax(precision[candidates])]
    # Among equal-precision thresholds prefer the highest (fewest false alarms at same precision).
    return float(thresholds[best])


def _target_margins(
    y: np.ndarray, precision: np.ndarray, recall: np.ndarray, policy: ThresholdPolicy
) -> np.ndarray:
    """Per threshold, the smaller of the recall and precision margins over their targets, each in
    binomial standard errors (recall: over the positives; precision: over the flagged rows).
    A sample of another size scales both errors alike, so the best threshold does not depend on
    it."""
    positives = float(np.sum(np.asarray(y) == 1))
    flagged = np.divide(recall * positives, precision, out=np.zeros_like(recall), where=precision > 0)

    def z(value: np.ndarray, target: float, n: np.ndarray | float) -> np.ndarray:
        # The floor keeps a margin finite where the value is 0 or 1 (no binomial spread).
        se = np.sqrt(np.maximum(value * (1 - value), 1e-6) / np.maximum(n, 1.0))
        return (value - target) / se

    margins = np.minimum(z(recall, policy.min_recall, positives), z(precision, policy.min_precision, flagged))
    return np.where(flagged > 0, margins, -np.inf)


def classification_metrics(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC-AUC, PR-AUC (average precision), F1, precision, recall, Brier, accuracy.

    Computed with plain numpy (same definitions as scikit-learn, checked by a test) because the
    bootstrap evaluates them thousands of times."""
    y = np.asarray(y).astype(int)
    proba = np.asarray(proba, dtype=float)
    pred = proba >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "roc_auc": _roc_auc(y, proba),
        "pr_auc": _average_precision(y, proba),
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "brier": float(np.mean((proba - y) ** 2)),
        "accuracy": float(np.mean(pred == (y == 1))),
    }


def _roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U form of the ROC-AUC (ties count one half)."""
    from scipy.stats import rankdata

    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision over distinct score thresholds (scikit-learn's definition)."""
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    distinct = np.r_[np.where(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(t)[distinct]
    fps = (distinct + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def regression_metrics(
    y: np.ndarray, pred: np.ndarray, low: np.ndarray | None = None, high: np.ndarray | None = None
) -> dict[str, float]:
    out = {
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "r2": float(skm.r2_score(y, pred)),
    }
    if low is not None and high is not None:
        out["coverage"] = float(np.mean((y >= low) & (y <= high)))
        out["interval_width"] = float(np.median(high - low))
    return out


def bootstrap_intervals(
    compute: Callable[[np.ndarray], dict[str, float]],
    n: int,
    rounds: int,
    seed: int,
    stratify: np.ndarray | None = None,
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals: ``compute(idx)`` evaluated on ``rounds`` resamples of row indices.

    Resampling is stratified by class when ``stratify`` is given, so every resample keeps both
    classes (needed for ROC-AUC on small sets)."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    groups = [np.where(stratify == c)[0] for c in np.unique(stratify)] if stratify is not None else None
    for _ in range(rounds):
        if groups is None:
            idx = rng.integers(0, n, n)
        else:
            idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        for key, value in compute(idx).items():
            samples.setdefault(key, []).append(value)
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for k, v in samples.items()}


def with_intervals(
    point: dict[str, float], intervals: dict[str, tuple[float, float]]
) -> dict[str, dict[str, float]]:
    return {
        k: {"value": v, "ci_low": intervals[k][0], "ci_high": intervals[k][1]}
        for k, v in point.items()
        if k in intervals
    }


def evaluate_classifier(
    y: np.ndarray, proba: np.ndarray, threshold: float, rounds: int, seed: int
) -> dict[str, dict[str, float]]:
    point = classification_metrics(y, proba, threshold)
    ci = bootstrap_intervals(
        lambda i: classification_metrics(y[i], proba[i], threshold), len(y), rounds, seed, y
    )
    return with_intervals(point, ci)


def evaluate_regressor(
    y: np.ndarray,
    pred: np.ndarray,
    low: np.ndarray | None,
    high: np.ndarray | None,
    rounds: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    point = regression_metrics(y, pred, low, high)
    ci = bootstrap_intervals(
        lambda i: regression_metrics(
            y[i], pred[i], None if low is None else low[i], None if high is None else high[i]
        ),
        len(y),
        rounds,
        seed,
    )
    return with_intervals(point, ci)


def flatten(prefix: str, metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """{"roc_auc": {"value":…, "ci_low":…}} → {"<prefix>_roc_auc": …, "<prefix>_roc_auc_ci_low": …}"""
    out: dict[str, float] = {}
    for name, stats in metrics.items():
        out[f"{prefix}_{name}"] = stats["value"]
        out[f"{prefix}_{name}_ci_low"] = stats["ci_low"]
        out[f"{prefix}_{name}_ci_high"] = stats["ci_high"]
    return out


def unflatten(prefix: str, flat: dict[str, float]) -> dict[str, dict[str, float]]:
    """The inverse of ``flatten`` for the metrics that carry ``prefix``."""
    out: dict[str, dict[str, float]] = {}
    start = f"{prefix}_"
    for key, value in flat.items():
        if not key.startswith(start) or key.endswith(("_ci_low", "_ci_high")):
            continue
        name = key[len(start) :]
        out[name] = {
            "value": value,
            "ci_low": flat.get(f"{key}_ci_low", float("nan")),
            "ci_high": flat.get(f"{key}_ci_high", float("nan")),
        }
    return out
