"""Repeated cross-validation: what a service's model and decision rule score on rows it never saw,
with the spread a sample of one fold's size shows.

Why: one train/hold-out split gives one number whose noise is as large as most of the choices we
make (BankChurn: ±0.01 ROC-AUC on 2,000 rows). A choice made on it, or a threshold tuned to a
target on it, does not hold on other rows. The mean over repeats of k-fold CV, and its standard
deviation over the repeat x fold scores, are the figures to choose by and to report.

Design: repeat ``r`` shuffles the rows into ``folds`` folds with seed ``settings.seed + r``
(``training.cv_splitter``) and scores every row out of fold (``training.cross_validate``, the
training loop's own code). The decision rule is then applied the way training applies it, on
rows whose labels it never saw: for each fold, the threshold (``threshold_policy``) or the
interval quantiles (split-conformal at ``interval_coverage``) are chosen on the out-of-fold
scores of the *other* folds of the same repeat and measured on this fold. So the threshold-
dependent figures (F1, recall, precision) and the interval coverage are estimates for unseen
rows, like the threshold-free ones (ROC-AUC, RMSE). One figure per fold and repeat; the table
gives mean ± sd (min-max) over them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from portfolio.core.data import load_training_data
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec
from portfolio.core.tasks import TASKS
from portfolio.core.training.learning_curve import format_figure
from portfolio.core.training.train import Progress, cross_validate, cv_splitter, no_progress

# Reported per task, in this order (the primary metric first).
CV_METRICS = {name: task.cv_metrics for name, task in TASKS.items()}


@dataclass(frozen=True)
class CVEstimate:
    """One candidate's repeated-CV figures: each metric once per (repeat, fold)."""

    service: str
    candidate: str
    rows: int
    repeats: int
    folds: int
    metrics: Mapping[str, tuple[float, ...]]

    def mean(self, metric: str) -> float:
        return float(np.mean(self.metrics[metric]))

    def std(self, metric: str) -> float:
        """Sample standard deviation over the repeat x fold figures (the spread of one
        fold-sized sample, not the standard error of the mean)."""
        values = self.metrics[metric]
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    def repeat_means(self, metric: str) -> list[float]:
        """The metric averaged over the folds of each repeat (what one k-fold CV would say)."""
        values = np.asarray(self.metrics[metric]).reshape(self.repeats, self.folds)
        return [float(v) for v in values.mean(axis=1)]

    def summary(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "candidate": self.candidate,
            "rows": self.rows,
            "repeats": self.repeats,
            "folds": self.folds,
            "mean": {m: self.mean(m) for m in self.metrics},
            "std": {m: self.std(m) for m in self.metrics},
            "repeat_means": {m: self.repeat_means(m) for m in self.metrics},
            "values": {m: list(v) for m, v in self.metrics.items()},
        }


def best_estimate(spec: ServiceSpec, estimates: Sequence[CVEstimate]) -> CVEstimate:
    """The candidate with the best mean primary metric (the first one on a tie).

    Args:
        spec: The service (its primary metric and direction).
        estimates: One estimate per candidate, at least one.

    Returns:
        The best estimate.
    """
    sign = 1 if spec.primary_higher_is_better else -1
    return max(estimates, key=lambda e: e.mean(spec.primary_metric) * sign)


def to_markdown(estimates: Sequence[CVEstimate]) -> str:
    """One row per candidate: each metric as mean ± sd (min-max) over repeats x folds."""
    if not estimates:
        return ""
    names = tuple(estimates[0].metrics)
    head = "| candidate | repeats x folds | " + " | ".join(f"{m} mean ± sd (min-max)" for m in names) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(names)]
    for e in estimates:
        cells = []
        for m in names:
            mean, v = e.mean(m), e.metrics[m]
            spread = f"({format_figure(min(v), mean)}-{format_figure(max(v), mean)})"
            cells.append(f"{format_figure(mean, mean)} ± {format_figure(e.std(m), mean)} {spread}")
        lines.append(f"| {e.candidate} | {e.repeats} x {e.folds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fold_metrics(
    spec: ServiceSpec, y: np.ndarray, oof: np.ndarray, fit_rows: np.ndarray, test_rows: np.ndarray
) -> dict[str, float]:
    """The decision rule chosen on ``fit_rows``' out-of-fold scores, measured on ``test_rows``.

    Args:
        spec: the service (its task, threshold policy, interval coverage).
        y: the labels of every row.
        oof: out-of-fold scores of every row (probabilities, or predictions).
        fit_rows: rows the threshold / interval quantiles are chosen on.
        test_rows: rows they are measured on (disjoint from ``fit_rows``).

    Returns:
        ``spec.strategy.reported_cv_metrics(spec)`` for the test rows.
    """
    return spec.strategy.fold_metrics(spec, y, oof, fit_rows, test_rows)


def repeated_cv(
    spec: ServiceSpec,
    settings: Settings,
    candidate: str,
    params: Mapping[str, Any],
    repeats: int = 3,
    folds: int | None = None,
    data_path: Path | None = None,
    progress: Progress = no_progress,
) -> CVEstimate:
    """Repeated k-fold CV of one candidate on every usable row, with the decision rule applied
    out of fold (see the module docstring).

    Args:
        spec: the service.
        settings: seed (repeat ``r`` uses ``seed + r``) and, unless ``folds`` is given, the folds.
        candidate: one of ``spec.candidates``.
        params: the candidate's parameters (its ``params.yaml`` section).
        repeats: how many times the rows are re-shuffled into folds.
        folds: folds per repeat (default ``settings.cv_folds``).
        data_path: another CSV than the service's raw file.
        progress: called as ``progress(description, done, total)`` after each fold.

    Returns:
        The figures per repeat and fold.
    """
    if candidate not in spec.candidates:
        raise ValueError(f"{spec.name} has no candidate {candidate!r} (one of {', '.join(spec.candidates)})")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    k = settings.cv_folds if folds is None else folds
    if k < 2:
        raise ValueError(f"folds must be at least 2, got {k}")
    ds = load_training_data(spec, settings, data_path)
    y = ds.y.to_numpy()
    values: dict[str, list[float]] = {m: [] for m in spec.strategy.reported_cv_metrics(spec)}
    for r in range(repeats):
        run = settings.model_copy(update={"seed": settings.seed + r, "cv_folds": k})
        done = r * k

        def step(desc: str, i: int, total: int, done: int = done) -> None:
            progress(f"{spec.name}: repeated CV {candidate}", done + i, repeats * k)

        res = cross_validate(spec, candidate, params, ds.X, ds.y, run, step)
        rows = np.arange(len(y))
        for _, test_rows in cv_splitter(spec, run).split(ds.X, y):
            fit_rows = np.setdiff1d(rows, test_rows, assume_unique=True)
            for m, v in fold_metrics(spec, y, res.oof, fit_rows, test_rows).items():
                values[m].append(v)
    return CVEstimate(spec.name, candidate, len(y), repeats, k, {m: tuple(v) for m, v in values.items()})
