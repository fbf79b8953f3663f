"""Evaluation plots (ROC, precision-recall, confusion, calibration, residuals, importance). The
metrics themselves are in ``portfolio.core.metrics`` and are re-exported here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: plots are files, never windows
import matplotlib.pyplot as plt
import numpy as np
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from portfolio.core.metrics import (
    MetricFn,
    bootstrap_intervals,
    choose_threshold,
    classification_metrics,
    evaluate_classifier,
    evaluate_regressor,
    flatten,
    regression_metrics,
    unflatten,
    with_intervals,
)
from portfolio.core.tasks import Task

__all__ = [
    "MetricFn",
    "bootstrap_intervals",
    "choose_threshold",
    "classification_metrics",
    "classification_plots",
    "evaluate_classifier",
    "evaluate_regressor",
    "evaluation_plots",
    "flatten",
    "importance_plot",
    "regression_metrics",
    "regression_plots",
    "unflatten",
    "with_intervals",
]


def evaluation_plots(
    task: Task, model: Any, y: np.ndarray, scores: Mapping[str, np.ndarray], out_dir: Path, title: str
) -> list[Path]:
    """The hold-out plots of a wrapped model's ``task.holdout_scores``.

    Args:
        task: The service's task.
        model: The wrapped model (a classifier's threshold is on it).
        y: The hold-out targets.
        scores: The model's hold-out scores.
        out_dir: Where the PNG files go.
        title: The service's title, on every plot.

    Returns:
        The plot files.
    """
    if task.score_kind == "probability":
        return classification_plots(y, scores["proba"], float(model.threshold), out_dir, title)
    return regression_plots(y, scores["pred"], out_dir, title)


def classification_plots(
    y: np.ndarray, proba: np.ndarray, threshold: float, out_dir: Path, title: str
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    fig, ax = plt.subplots(figsize=(5, 5))
    skm.RocCurveDisplay.from_predictions(y, proba, ax=ax)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_title(f"{title}: ROC")
    paths.append(_save(fig, out_dir / "roc_curve.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    skm.PrecisionRecallDisplay.from_predictions(y, proba, ax=ax)
    ax.set_title(f"{title}: precision-recall")
    paths.append(_save(fig, out_dir / "pr_curve.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    skm.ConfusionMatrixDisplay.from_predictions(y, (proba >= threshold).astype(int), ax=ax)
    ax.set_title(f"{title}: confusion matrix @ {threshold:.3f}")
    paths.append(_save(fig, out_dir / "confusion_matrix.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    frac_pos, mean_pred = calibration_curve(y, proba, n_bins=10, strategy="quantile")
    ax.plot(mean_pred, frac_pos, "o-", label="model")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed frequency")
    ax.legend()
    ax.set_title(f"{title}: calibration")
    paths.append(_save(fig, out_dir / "calibration.png"))
    return paths


def regression_plots(y: np.ndarray, pred: np.ndarray, out_dir: Path, title: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y, pred, s=3, alpha=0.3)
    lim = [0, float(max(np.max(y), np.max(pred)))]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title(f"{title}: predicted vs actual")
    paths.append(_save(fig, out_dir / "predicted_vs_actual.png"))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(pred, y - pred, s=3, alpha=0.3)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("residual")
    ax.set_title(f"{title}: residuals")
    paths.append(_save(fig, out_dir / "residuals.png"))
    return paths


def importance_plot(importances: dict[str, float], out_path: Path, title: str) -> Path:
    items = sorted(importances.items(), key=lambda kv: kv[1])[-20:]
    fig, ax = plt.subplots(figsize=(6, max(3, 0.3 * len(items))))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_title(f"{title}: permutation importance")
    return _save(fig, out_path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
