"""Learning curve: how a candidate's held-out metrics move with the number of training rows.

Why: a registered model is often scored on rows it never saw *after* it was refit on every row
we have, so its cross-validated figures (each fold model fits on 64% of the data with the
default split) understate it when more data still helps. CarVision is the case in point: its
price statistics match re-posted listings against the training rows, so every extra row helps.
The curve measures that directly.

Design: each repeat fixes its own random test rows (``test_fraction``) and fits the candidate on
growing, nested subsets of the remaining rows, so the points of one repeat differ only in the
training rows (paired); repeats move the test rows, so their spread shows how much one
test sample of that size can vary. Classification subsets and test rows keep the class ratio.
Threshold-free metrics only (classifiers are not re-thresholded here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from portfolio.core.data import load_training_data
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec
from portfolio.core.tasks import TASKS
from portfolio.core.training.train import Progress, no_progress, score_metrics, score_rows

# Metrics that need no decision threshold, per task (first: the service's primary metric).
CURVE_METRICS = {name: task.curve_metrics for name, task in TASKS.items()}


@dataclass(frozen=True)
class CurvePoint:
    fraction: float  # of the rows left after the test rows
    train_rows: int
    metrics: Mapping[str, tuple[float, ...]]  # metric → one value per repeat

    def mean(self, metric: str) -> float:
        return float(np.mean(self.metrics[metric]))

    def std(self, metric: str) -> float:
        values = self.metrics[metric]
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class LearningCurve:
    service: str
    candidate: str
    rows: int  # usable rows (after validation and training-only cleaning)
    test_rows: int
    repeats: int
    points: tuple[CurvePoint, ...]

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(self.points[0].metrics) if self.points else ()

    def to_markdown(self) -> str:
        names = self.metric_names
        head = "| fraction | training rows | " + " | ".join(f"{m} mean ± sd (min-max)" for m in names) + " |"
        lines = [head, "|" + "---:|" * (2 + len(names))]
        for p in self.points:
            cells = []
            for m in names:
                mean, v = p.mean(m), p.metrics[m]
                cells.append(
                    f"{format_figure(mean, mean)} ± {format_figure(p.std(m), mean)} "
                    f"({format_figure(min(v), mean)}-{format_figure(max(v), mean)})"
                )
            lines.append(f"| {p.fraction:.3f} | {p.train_rows:,} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def summary(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "candidate": self.candidate,
            "rows": self.rows,
            "test_rows": self.test_rows,
            "repeats": self.repeats,
            "points": [
                {
                    "fraction": p.fraction,
                    "train_rows": p.train_rows,
                    "metrics": {m: list(v) for m, v in p.metrics.items()},
                    "mean": {m: p.mean(m) for m in p.metrics},
                    "std": {m: p.std(m) for m in p.metrics},
                }
                for p in self.points
            ],
        }


def format_figure(value: float, scale: float) -> str:
    """Metrics whose mean (``scale``) is in dollars (RMSE, MAE) as whole numbers, scores (R²,
    ROC-AUC) to 4 decimals."""
    return f"{value:,.0f}" if abs(scale) >= 100 else f"{value:.4f}"


def _check(fractions: Sequence[float], repeats: int, test_fraction: float) -> list[float]:
    if not fractions:
        raise ValueError("fractions: give at least one")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ValueError(f"fractions must be in (0, 1], got {bad}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return sorted(set(float(f) for f in fractions))


def learning_curve(
    spec: ServiceSpec,
    settings: Settings,
    candidate: str,
    params: Mapping[str, Any],
    fractions: Sequence[float],
    repeats: int = 3,
    test_fraction: float = 0.1,
    data_path: Path | None = None,
    progress: Progress = no_progress,
) -> LearningCurve:
    """Fit ``candidate`` (with ``params``) on each fraction of the non-test rows, ``repeats``
    times with different test rows (seeds ``settings.seed + r``), and score the test rows."""
    if candidate not in spec.candidates:
        raise ValueError(f"{spec.name} has no candidate {candidate!r} (one of {', '.join(spec.candidates)})")
    fracs = _check(fractions, repeats, test_fraction)
    ds = load_training_data(spec, settings, data_path)
    X, y = ds.X, ds.y.to_numpy()
    names = spec.strategy.curve_metrics
    classify = spec.strategy.stratified
    values: dict[float, dict[str, list[float]]] = {f: {m: [] for m in names} for f in fracs}
    for r in range(repeats):
        seed = settings.seed + r
        rest, test = train_test_split(
            np.arange(len(X)), test_size=test_fraction, random_state=seed, stratify=y if classify else None
        )
        # One shuffled order of the remaining rows; each fraction takes a prefix of it, so the
        # subsets are nested. Classifiers take a stratified order (a prefix keeps the class ratio).
        shuffle = np.random.default_rng(seed).permutation
        rest = rest[_stratified_order(y[rest], seed) if classify else shuffle(len(rest))]
        for i, f in enumerate(fracs):
            train = rest[: _train_rows(f, len(rest))]
            est = spec.candidates[candidate](params)
            est.fit(X.iloc[train], y[train])  # type: ignore[attr-defined]
            metrics = score_metrics(spec, y[test], score_rows(spec, est, X.iloc[test]))
            for m in names:
                values[f][m].append(float(metrics[m]))
            progress(f"{spec.name}: learning curve {candidate}", r * len(fracs) + i + 1, repeats * len(fracs))
    n_rest, n_test = len(rest), len(test)  # the same sizes in every repeat
    points = tuple(
        CurvePoint(f, _train_rows(f, n_rest), {m: tuple(v) for m, v in values[f].items()}) for f in fracs
    )
    return LearningCurve(spec.name, candidate, len(X), n_test, repeats, points)


def _train_rows(fraction: float, available: int) -> int:
    return max(1, round(fraction * available))


def _stratified_order(y: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of ``range(len(y))`` whose every prefix holds the classes in (nearly) their
    overall ratio: each class shuffled, then the classes interleaved by their running share."""
    rng = np.random.default_rng(seed)
    keys = np.empty(len(y))
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        keys[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)  # position within its class
    return np.argsort(keys, kind="stable")
