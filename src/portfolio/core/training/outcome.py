"""The typed results of training: a candidate's cross-validation and a whole run's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class CandidateResult:
    """One candidate's cross-validation: out-of-fold scores, fold scores of the selection metric,
    metrics with intervals, and the threshold or interval quantiles chosen out of fold."""

    name: str
    oof: np.ndarray
    fold_scores: list[float]
    cv_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    threshold: float | None = None
    quantiles: tuple[float, float] | None = None

    @property
    def primary(self) -> float:
        return float(np.mean(self.fold_scores))


@dataclass
class TrainOutcome:
    """What one training run produced: the registered version, its alias after the gate, and the
    evidence the model card and the CLI summary show. Every figure is from the model fitted on the
    training split (also with ``refit_full``)."""

    service: str
    run_id: str
    version: str
    alias: str
    best: str
    threshold: float | None
    cv: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    candidates: dict[str, dict[str, float]]
    gate: dict[str, Any]
    data_report: dict[str, Any]
    refit_full: bool = False
    final_fit_rows: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    importance: dict[str, float] = field(default_factory=dict)
    fairness: dict[str, Any] | None = None
    train_rows: int = 0
    # (level, q_low, q_high) when a refit regressor's interval was calibrated on the hold-out.
    refit_interval: tuple[float, float, float] | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "version": self.version,
            "alias": self.alias,
            "model": self.best,
            "threshold": self.threshold,
            "cv": self.cv,
            "test": self.test,
            "candidates": self.candidates,
            "gate": self.gate,
            "refit_full": self.refit_full,
            "final_fit_rows": self.final_fit_rows,
        }
