from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from portfolio.core.estimators import IntervalRegressor, conformal_log_quantiles
from portfolio.core.spec import ThresholdPolicy
from portfolio.core.training import evaluation as ev


def _scores(n: int = 2000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    proba = np.clip(0.25 + 0.35 * (y - 0.25) + rng.normal(0, 0.2, n), 0, 1)
    return y, np.round(proba, 2)  # ≤ 101 distinct scores keeps the brute-force checks quick


def test_max_f1_threshold_is_the_brute_force_best() -> None:
    y, p = _scores()
    t = ev.choose_threshold(y, p, ThresholdPolicy("max_f1"))
    best = max(np.unique(p), key=lambda c: f1_score(y, p >= c))
    assert f1_score(y, p >= t) == f1_score(y, p >= best)


def test_max_accuracy_threshold_is_the_brute_force_best() -> None:
    y, p = _scores()
    t = ev.choose_threshold(y, p, ThresholdPolicy("max_accuracy"))
    best = max(np.unique(p), key=lambda c: accuracy_score(y, p >= c))
    assert accuracy_score(y, p >= t) == accuracy_score(y, p >= best)
    assert t != ev.choose_threshold(y, p, ThresholdPolicy("max_f1"))  # a different rule, here


def test_min_recall_threshold_reaches_recall_with_best_precision() -> None:
    y, p = _scores()
    t = ev.choose_threshold(y, p, ThresholdPolicy("min_recall", 0.8))
    assert recall_score(y, p >= t) >= 0.8
    feasible = [c for c in np.unique(p) if recall_score(y, p >= c) >= 0.8]
    best_precision = max(precision_score(y, p >= c) for c in feasible)
    assert precision_score(y, p >= t) == best_precision


def test_recall_precision_threshold_balances_the_two_margins() -> None:
    """The chosen threshold has the largest smaller margin (in binomial standard errors) of all
    thresholds: brute force over every distinct score."""
    y, p = _scores()
    policy = ThresholdPolicy("recall_precision", min_recall=0.8, min_precision=0.5)
    t = ev.choose_threshold(y, p, policy)

    def smaller_margin(c: float) -> float:
        pred = p >= c
        r, pr = recall_score(y, pred), precision_score(y, pred, zero_division=0)
        z_r = (r - 0.8) / np.sqrt(max(r * (1 - r), 1e-6) / y.sum())
        z_p = (pr - 0.5) / np.sqrt(max(pr * (1 - pr), 1e-6) / pred.sum())
        return min(z_r, z_p)

    best = max(smaller_margin(c) for c in np.unique(p) if (p >= c).sum() > 0)
    assert smaller_margin(t) == best
    # Both met here, with more recall than the recall-only rule's bare minimum (precision has
    # room to give).
    recall_only = ev.choose_threshold(y, p, ThresholdPolicy("min_recall", 0.8))
    assert t < recall_only
    assert recall_score(y, p >= t) > recall_score(y, p >= recall_only) >= 0.8
    assert precision_score(y, p >= t) >= 0.5
    # A stricter precision target moves the threshold up.
    stricter = ev.choose_threshold(y, p, ThresholdPolicy("recall_precision", 0.8, 0.6))
    assert stricter > t


def test_bootstrap_interval_brackets_the_point_and_shrinks_with_n() -> None:
    widths = []
    for n in (300, 3000):
        y, p = _scores(n)
        m = ev.evaluate_classifier(y, p, 0.4, rounds=200, seed=0)
        for stats in m.values():
            assert stats["ci_low"] <= stats["value"] <= stats["ci_high"]
        widths.append(m["roc_auc"]["ci_high"] - m["roc_auc"]["ci_low"])
    assert widths[1] < widths[0] / 2


def test_conformal_interval_covers_about_80_percent_on_new_data() -> None:
    rng = np.random.default_rng(3)
    pred = rng.uniform(1000, 30000, 4000)
    y = pred * np.exp(rng.normal(0, 0.25, 4000))
    q = conformal_log_quantiles(y[:2000], pred[:2000], 0.8)
    low, high = IntervalRegressor(None, *q).interval_from_point(pred[2000:])
    coverage = np.mean((y[2000:] >= low) & (y[2000:] <= high))
    assert 0.77 <= coverage <= 0.83


def test_regression_metrics_and_flatten() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    m = ev.regression_metrics(y, y + 1, y - 2, y + 2)
    assert m["rmse"] == 1.0 and m["mae"] == 1.0 and m["coverage"] == 1.0
    flat = ev.flatten("test", {"rmse": {"value": 1.0, "ci_low": 0.5, "ci_high": 1.5}})
    assert flat == {"test_rmse": 1.0, "test_rmse_ci_low": 0.5, "test_rmse_ci_high": 1.5}


def test_fast_metrics_equal_scikit_learn() -> None:
    from sklearn import metrics as skm

    y, p = _scores(1500, seed=7)
    p = np.round(p, 2)  # ties on purpose
    m = ev.classification_metrics(y, p, 0.4)
    pred = (p >= 0.4).astype(int)
    assert np.isclose(m["roc_auc"], skm.roc_auc_score(y, p))
    assert np.isclose(m["pr_auc"], skm.average_precision_score(y, p))
    assert np.isclose(m["f1"], skm.f1_score(y, pred))
    assert np.isclose(m["precision"], skm.precision_score(y, pred))
    assert np.isclose(m["recall"], skm.recall_score(y, pred))
    assert np.isclose(m["brier"], skm.brier_score_loss(y, p))
    assert np.isclose(m["accuracy"], skm.accuracy_score(y, pred))
