"""What a service is: a specification the core turns into training, tracking, serving and batch
prediction. A service never re-implements any of those; it only fills in this object."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
from sklearn.base import BaseEstimator

from portfolio.core.metrics import ThresholdPolicy
from portfolio.core.schema import Field
from portfolio.core.tasks import Task, task_named

__all__ = ["CleaningReport", "Companion", "ServiceSpec", "TaskName", "ThresholdPolicy"]

TaskName = Literal["classification", "regression"]


@dataclass(frozen=True)
class CleaningReport:
    """Rows a service's training-only cleaning rules excluded, counted per rule."""

    excluded_by_rule: Mapping[str, int]
    rows_in: int
    rows_out: int


@dataclass(frozen=True)
class Companion:
    """A process a service runs beside its API in ``portfolio up`` (CarVision: its dashboard).

    ``name`` names its log file and ``argv(host, port)`` is its command line; it listens on the
    settings' ``port_setting``, is ready when ``health_path`` answers, and finds the service's API
    in the env var ``api_url_env``.
    """

    name: str
    title: str
    argv: Callable[[str, int], list[str]]
    port_setting: str
    health_path: str
    api_url_env: str


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    title: str
    task: TaskName  # its behaviour: ``strategy`` (portfolio.core.tasks)
    data_file: str
    target: str
    fields: tuple[Field, ...]
    # Candidate models: name → builder of the unfitted scikit-learn pipeline (features + model)
    # from its params.yaml section. All are cross-validated; the best by the primary metric wins.
    candidates: Mapping[str, Callable[[Mapping[str, Any]], BaseEstimator]]
    # Raw target column → model target (e.g. "Yes"/"No" → 1/0).
    encode_target: Callable[[pd.Series], pd.Series] = lambda s: s
    # Columns in the raw file that are identifiers or otherwise never features.
    ignored_columns: tuple[str, ...] = ()
    threshold_policy: ThresholdPolicy = field(default_factory=ThresholdPolicy)
    # Training-only cleaning (e.g. placeholder prices): returns kept rows and counts per rule.
    clean_training: Callable[[pd.DataFrame], tuple[pd.DataFrame, CleaningReport]] | None = None
    # Types skops may load besides scikit-learn's own (fully qualified names).
    trusted_types: tuple[str, ...] = ()
    # Columns whose groups the fairness report compares (classification only).
    fairness_groups: tuple[str, ...] = ()
    description: str = ""
    intended_use: str = ""
    limitations: str = ""
    # Regression: coverage of the conformal prediction interval.
    interval_coverage: float = 0.8
    # Classification: extra output columns per prediction (e.g. risk tier, top factors),
    # computed as extra_outputs(typed field columns {field: numpy array}, probabilities,
    # predictor, explain=bool) → {column: sequence}. Columns, not a DataFrame: this runs on every
    # API request. ``explain=False`` (the caller's choice: `?explain=false`, `--no-explain`) skips
    # the per-row explanations, whose columns are then None.
    extra_outputs: Callable[..., Mapping[str, Any]] | None = None
    extra_output_columns: tuple[str, ...] = ()
    # True: ``extra_outputs`` is called with probabilities None, scores the rows itself in the
    # same model call as the rows it needs (telecom: the reference substitutions behind
    # top_factors) and returns them as ``probability``. Saves one model call per request.
    extra_outputs_score: bool = False
    # The metric that selects the candidate (CV fold mean) and decides the champion gate; None:
    # ROC-AUC for classifiers, RMSE for regressors. A classifier's fold scores are at 0.5.
    selection_metric: str | None = None
    # Processes started beside the API by `portfolio up` (e.g. a dashboard).
    companions: tuple[Companion, ...] = ()

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def primary_metric(self) -> str:
        """The metric that selects the candidate and decides the champion gate."""
        return self.selection_metric or self.strategy.default_metric

    @property
    def primary_higher_is_better(self) -> bool:
        return self.strategy.higher_is_better

    def prefers(self, new: float, current: float) -> bool:
        """The rule of the champion gate, of the candidate selection and of the shadow comparison
        (``portfolio promote --if-better``): ``new`` is not worse than ``current`` on the primary
        metric (ties go to ``new``).

        Args:
            new: The new model's (challenger's, candidate's) primary metric.
            current: The current one's (champion's, best so far), on the same rows or folds.

        Returns:
            True when ``new`` should replace ``current``.
        """
        return new >= current if self.primary_higher_is_better else new <= current

    @property
    def strategy(self) -> Task:
        """What this service's task (``task``) does differently: ``portfolio.core.tasks``."""
        return task_named(self.task)
