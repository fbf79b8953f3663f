"""What differs between a classifier and a regressor, in one place per task.

A spec names its task as a string (``spec.task``, as in params and docs); ``spec.strategy`` (or
``task_named(name)``) is its strategy: how rows are scored, which metrics rank and report it, how its
decision rule is calibrated out of fold (a threshold, or a conformal interval), which columns a
prediction has, how its outputs drift and are explained, and what the model card says of it.
Every other module asks the strategy instead of comparing task names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd

from portfolio.core import metrics as mx
from portfolio.core.estimators import IntervalRegressor, conformal_log_quantiles


class ServiceSpec(Protocol):
    """What a task reads of a service's spec (``portfolio.core.spec.ServiceSpec``, which imports
    this module to resolve its ``task``)."""

    @property
    def target(self) -> str: ...
    @property
    def threshold_policy(self) -> mx.ThresholdPolicy: ...
    @property
    def interval_coverage(self) -> float: ...
    @property
    def extra_outputs(self) -> Callable[..., Mapping[str, Any]] | None: ...
    @property
    def extra_outputs_score(self) -> bool: ...
    @property
    def extra_output_columns(self) -> tuple[str, ...]: ...


class Rule(Protocol):
    """A decision rule: a classifier's threshold or a regressor's interval quantiles."""

    @property
    def threshold(self) -> float | None: ...
    @property
    def quantiles(self) -> tuple[float, float] | None: ...


@dataclass(frozen=True)
class Calibration:
    """A candidate's decision rule chosen out of fold, with its metrics (95% bootstrap CIs)."""

    metrics: dict[str, dict[str, float]]
    threshold: float | None = None  # classifiers
    quantiles: tuple[float, float] | None = None  # regressors: log-ratio interval quantiles


class Task:
    """The behaviour one kind of supervised task gives every service of that kind."""

    name: ClassVar[str]
    # The metric that ranks candidates when the spec names none, and its direction.
    default_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    # Reported by `portfolio cv` (the primary metric first) and by `portfolio learning-curve`.
    cv_metrics: ClassVar[tuple[str, ...]]
    curve_metrics: ClassVar[tuple[str, ...]]
    # Splits and folds keep the class ratio.
    stratified: ClassVar[bool]
    # Predictions carry a conformal interval.
    interval: ClassVar[bool]
    # Predictions are decided by a threshold on the score.
    thresholded: ClassVar[bool]
    # What a score is: P(positive class) ("probability"), or the prediction itself ("value").
    score_kind: ClassVar[str]
    # The scale explanations add up in.
    explain_scale: ClassVar[str]
    # permutation_importance's scorer on the hold-out.
    importance_scoring: ClassVar[str]

    # -- targets ----------------------------------------------------------------------------------
    def usable_target(self, y: pd.Series) -> pd.Series:
        """Numeric targets with unusable values as NaN."""
        return y

    def typed_target(self, y: pd.Series) -> pd.Series:
        """The usable targets in the model's dtype."""
        return y

    # -- scoring ----------------------------------------------------------------------------------
    def scores(self, model: Any, X: pd.DataFrame) -> np.ndarray:
        """A fitted model's score per row (see ``score_kind``)."""
        raise NotImplementedError

    def point_metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        """Metrics of raw scores without a decision rule (a classifier's at threshold 0.5: only
        the threshold-free ones are meant to be read)."""
        raise NotImplementedError

    def splitter(self, folds: int, seed: int) -> Any:
        """The cross-validation folds, shuffled with ``seed``."""
        from sklearn.model_selection import KFold, StratifiedKFold

        cls = StratifiedKFold if self.stratified else KFold
        return cls(folds, shuffle=True, random_state=seed)

    def stratify(self, y: Any) -> Any:
        """What ``train_test_split`` stratifies on (None: nothing)."""
        return y if self.stratified else None

    # -- decision rule ----------------------------------------------------------------------------
    def calibrate(
        self, spec: ServiceSpec, y: np.ndarray, oof: np.ndarray, rounds: int, seed: int
    ) -> Calibration:
        """Choose the decision rule on out-of-fold scores and measure it there."""
        raise NotImplementedError

    def fold_metrics(
        self, spec: ServiceSpec, y: np.ndarray, oof: np.ndarray, fit_rows: np.ndarray, test_rows: np.ndarray
    ) -> dict[str, float]:
        """``reported_cv_metrics`` on ``test_rows`` with the rule chosen on ``fit_rows`` of ``oof``."""
        metrics = self.rule_metrics(spec, y[fit_rows], oof[fit_rows], y[test_rows], oof[test_rows])
        return {m: float(metrics[m]) for m in self.reported_cv_metrics(spec)}

    def reported_cv_metrics(self, spec: Any) -> tuple[str, ...]:
        """``cv_metrics``, led by the spec's selection metric when it is another one (Plan: accuracy)."""
        primary = spec.primary_metric
        return self.cv_metrics if primary in self.cv_metrics else (primary, *self.cv_metrics)

    def rule_metrics(
        self, spec: ServiceSpec, y_fit: np.ndarray, s_fit: np.ndarray, y: np.ndarray, s: np.ndarray
    ) -> dict[str, float]:
        """Point metrics (with the rule) of scores ``s``, the rule chosen on ``s_fit``."""
        raise NotImplementedError

    def wrap(self, spec: ServiceSpec, estimator: Any, rule: Rule) -> Any:
        """The unfitted candidate wrapped with its decision rule (what is served)."""
        raise NotImplementedError

    def holdout_scores(self, model: Any, X: pd.DataFrame) -> dict[str, np.ndarray]:
        """Everything an evaluation needs from a fitted, wrapped model."""
        raise NotImplementedError

    def evaluate(
        self, model: Any, scores: Mapping[str, np.ndarray], y: np.ndarray, rounds: int, seed: int
    ) -> dict[str, dict[str, float]]:
        """Metrics with 95% bootstrap intervals of a wrapped model's ``holdout_scores``."""
        raise NotImplementedError

    def decision_params(
        self, threshold: float | None, quantiles: tuple[float, float] | None
    ) -> dict[str, Any]:
        """The decision rule as the training run logs it."""
        raise NotImplementedError

    # -- predictions ------------------------------------------------------------------------------
    def output_columns(self, spec: ServiceSpec) -> list[str]:
        """The columns of a prediction, in order."""
        raise NotImplementedError

    def score_column(self, spec: ServiceSpec) -> str:
        """The output column that holds the score."""
        raise NotImplementedError

    def outputs(self, predictor: Any, cols: Mapping[str, np.ndarray], explain: bool) -> dict[str, Any]:
        """Every output column for typed field columns (see ``Predictor``)."""
        raise NotImplementedError

    def constants(self, threshold: float | None) -> dict[str, Any]:
        """Fields every answer of one model carries beside its outputs."""
        return {}

    def label_counts(self, outputs: Mapping[str, Any], rows: int) -> dict[str, int]:
        """Predictions per label, for the API's prediction counter."""
        raise NotImplementedError

    def positive_rate(self, scores: np.ndarray, threshold: float | None) -> float | None:
        """Share of rows decided positive (None: no such thing for this task or model)."""
        return None

    def realized_metrics(
        self, spec: ServiceSpec, y: np.ndarray, outputs: Sequence[Mapping[str, Any]], rounds: int, seed: int
    ) -> dict[str, dict[str, float]]:
        """Metrics (95% bootstrap intervals) of logged answers against their true labels."""
        raise NotImplementedError

    def metric_difference(
        self,
        spec: ServiceSpec,
        metric: str,
        y: np.ndarray,
        served: Sequence[Mapping[str, Any]],
        shadow: Sequence[Mapping[str, Any]],
    ) -> tuple[Callable[[np.ndarray], dict[str, float]], np.ndarray | None]:
        """``metric`` of the shadow answers less that of the served ones on the same labelled rows.

        Returns:
            The difference on row indices (``{"d": value}``, as ``bootstrap_intervals`` takes
            it), and what its bootstrap stratifies on (None: nothing).
        """
        raise NotImplementedError

    # -- explanations -----------------------------------------------------------------------------
    def to_explain_scale(self, scores: np.ndarray) -> np.ndarray:
        """Scores in ``explain_scale``."""
        return scores

    def tree_booster(self, final: Any) -> bool:
        """Is a pipeline's final step an XGBoost booster of this task that exact TreeSHAP explains?"""
        raise NotImplementedError

    def tree_output(self, final: Any, Xt: Any) -> np.ndarray:
        """Such a booster's own output in ``explain_scale`` for its encoded input ``Xt``."""
        raise NotImplementedError

    # -- model card -------------------------------------------------------------------------------
    def card_refit_rule(self, refit_interval: tuple[float, float, float] | None) -> str:
        """What a refit keeps besides the candidate and its hyper-parameters."""
        raise NotImplementedError

    def card_rule_lines(
        self, spec: ServiceSpec, threshold: float | None, refit_interval: tuple[float, float, float] | None
    ) -> list[str]:
        """The model card's lines on the decision rule."""
        raise NotImplementedError


class ClassificationTask(Task):
    """Binary classification: P(positive) scores, a threshold chosen by the spec's policy."""

    name = "classification"
    default_metric = "roc_auc"
    higher_is_better = True
    cv_metrics = ("roc_auc", "pr_auc", "f1", "recall", "precision", "threshold")
    curve_metrics = ("roc_auc", "pr_auc")
    stratified = True
    interval = False
    thresholded = True
    score_kind = "probability"
    explain_scale = "log_odds"
    importance_scoring = "roc_auc"

    def usable_target(self, y: pd.Series) -> pd.Series:
        return y.where(y.isin([0, 1]))  # a label outside {0, 1} is unusable, not a third class

    def typed_target(self, y: pd.Series) -> pd.Series:
        return y.astype(int)

    def scores(self, model: Any, X: pd.DataFrame) -> np.ndarray:
        return np.asarray(model.predict_proba(X)[:, 1], dtype=float)

    def point_metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        return mx.classification_metrics(y, scores, 0.5)

    def calibrate(
        self, spec: ServiceSpec, y: np.ndarray, oof: np.ndarray, rounds: int, seed: int
    ) -> Calibration:
        threshold = mx.choose_threshold(y, oof, spec.threshold_policy)
        return Calibration(mx.evaluate_classifier(y, oof, threshold, rounds, seed), threshold=threshold)

    def rule_metrics(
        self, spec: ServiceSpec, y_fit: np.ndarray, s_fit: np.ndarray, y: np.ndarray, s: np.ndarray
    ) -> dict[str, float]:
        threshold = mx.choose_threshold(y_fit, s_fit, spec.threshold_policy)
        return {**mx.classification_metrics(y, s, threshold), "threshold": threshold}

    def wrap(self, spec: ServiceSpec, estimator: Any, rule: Rule) -> Any:
        from sklearn.model_selection import FixedThresholdClassifier

        assert rule.threshold is not None
        return FixedThresholdClassifier(estimator, threshold=rule.threshold, response_method="predict_proba")

    def holdout_scores(self, model: Any, X: pd.DataFrame) -> dict[str, np.ndarray]:
        return {"proba": self.scores(model, X)}

    def evaluate(
        self, model: Any, scores: Mapping[str, np.ndarray], y: np.ndarray, rounds: int, seed: int
    ) -> dict[str, dict[str, float]]:
        return mx.evaluate_classifier(y, scores["proba"], float(model.threshold), rounds, seed)

    def decision_params(
        self, threshold: float | None, quantiles: tuple[float, float] | None
    ) -> dict[str, Any]:
        return {"threshold": threshold}

    def output_columns(self, spec: ServiceSpec) -> list[str]:
        return ["probability", "prediction", *spec.extra_output_columns]

    def score_column(self, spec: ServiceSpec) -> str:
        return "probability"

    def outputs(self, predictor: Any, cols: Mapping[str, np.ndarray], explain: bool) -> dict[str, Any]:
        spec = predictor.spec
        assert predictor.threshold is not None
        extra: dict[str, Any] | None = None
        if spec.extra_outputs is not None and spec.extra_outputs_score:
            extra = dict(spec.extra_outputs(cols, None, predictor, explain=explain))
            scores = np.asarray(extra.pop("probability"), dtype=np.float64)
        else:
            scores = predictor.scores_columns(cols)
            if spec.extra_outputs is not None:
                extra = dict(spec.extra_outputs(cols, scores, predictor, explain=explain))
        out: dict[str, Any] = {
            "probability": scores,
            "prediction": (scores >= predictor.threshold).astype(int),
        }
        if extra is not None:
            for col in spec.extra_output_columns:
                out[col] = np.asarray(extra[col])
        return out

    def constants(self, threshold: float | None) -> dict[str, Any]:
        return {"threshold": threshold}

    def label_counts(self, outputs: Mapping[str, Any], rows: int) -> dict[str, int]:
        predictions = outputs["prediction"]
        if len(predictions) <= 64:  # a request: a loop costs less than np.unique (~1 vs 5 µs)
            tally: dict[str, int] = {}
            for label in map(str, predictions.tolist()):
                tally[label] = tally.get(label, 0) + 1
            return tally
        labels, counts = np.unique(predictions, return_counts=True)
        return {str(k): int(n) for k, n in zip(labels.tolist(), counts.tolist(), strict=True)}

    def positive_rate(self, scores: np.ndarray, threshold: float | None) -> float | None:
        return None if threshold is None else float(np.mean(scores >= threshold))

    def realized_metrics(
        self, spec: ServiceSpec, y: np.ndarray, outputs: Sequence[Mapping[str, Any]], rounds: int, seed: int
    ) -> dict[str, dict[str, float]]:
        proba = np.array([o["probability"] for o in outputs], dtype=float)
        threshold = float(outputs[-1]["threshold"])
        return mx.evaluate_classifier(y.astype(int), proba, threshold, rounds, seed)

    def metric_difference(
        self,
        spec: ServiceSpec,
        metric: str,
        y: np.ndarray,
        served: Sequence[Mapping[str, Any]],
        shadow: Sequence[Mapping[str, Any]],
    ) -> tuple[Callable[[np.ndarray], dict[str, float]], np.ndarray | None]:
        a = np.array([o["probability"] for o in served], dtype=float)
        b = np.array([o["probability"] for o in shadow], dtype=float)
        ta, tb = float(served[-1]["threshold"]), float(shadow[-1]["threshold"])
        yi = y.astype(int)

        def diff(i: np.ndarray) -> dict[str, float]:
            return {
                "d": mx.classification_metrics(yi[i], b[i], tb)[metric]
                - mx.classification_metrics(yi[i], a[i], ta)[metric]
            }

        return diff, yi

    def to_explain_scale(self, scores: np.ndarray) -> np.ndarray:
        return mx.logit(scores, eps=1e-15)

    def tree_booster(self, final: Any) -> bool:
        from xgboost import XGBClassifier

        if not isinstance(final, XGBClassifier) or getattr(final, "n_classes_", 2) != 2:
            return False
        return bool(final.get_xgb_params().get("objective") == "binary:logistic")

    def tree_output(self, final: Any, Xt: Any) -> np.ndarray:
        return np.asarray(final.predict(Xt, output_margin=True), dtype=float)

    def card_refit_rule(self, refit_interval: tuple[float, float, float] | None) -> str:
        return "threshold"

    def card_rule_lines(
        self, spec: ServiceSpec, threshold: float | None, refit_interval: tuple[float, float, float] | None
    ) -> list[str]:
        if threshold is None:
            return []
        return [
            f"- Decision threshold: **{threshold:.4f}**, chosen on out-of-fold predictions "
            f"({spec.threshold_policy.kind}"
            + _policy_note(spec.threshold_policy)
            + "), stored in the artifact and used by every prediction path."
        ]


def _policy_note(policy: mx.ThresholdPolicy) -> str:
    """The threshold rule's targets, as the model card states them."""
    if policy.kind == "min_recall":
        return f", recall ≥ {policy.min_recall}"
    if policy.kind == "recall_precision":
        return (
            f": recall ≥ {policy.min_recall} and precision ≥ {policy.min_precision} both, the threshold "
            "whose smaller margin over its target, in binomial standard errors, is largest"
        )
    return ""


class RegressionTask(Task):
    """Regression: point predictions with a split-conformal interval."""

    name = "regression"
    default_metric = "rmse"
    higher_is_better = False
    cv_metrics = ("rmse", "r2", "mae", "coverage", "interval_width")
    curve_metrics = ("rmse", "r2", "mae")
    stratified = False
    interval = True
    thresholded = False
    score_kind = "value"
    explain_scale = "prediction"
    importance_scoring = "neg_root_mean_squared_error"

    def scores(self, model: Any, X: pd.DataFrame) -> np.ndarray:
        return np.asarray(model.predict(X), dtype=float)

    def point_metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        return mx.regression_metrics(y, scores)

    def calibrate(
        self, spec: ServiceSpec, y: np.ndarray, oof: np.ndarray, rounds: int, seed: int
    ) -> Calibration:
        quantiles = conformal_log_quantiles(y, oof, spec.interval_coverage)
        low, high = IntervalRegressor(None, *quantiles).interval_from_point(oof)
        return Calibration(mx.evaluate_regressor(y, oof, low, high, rounds, seed), quantiles=quantiles)

    def rule_metrics(
        self, spec: ServiceSpec, y_fit: np.ndarray, s_fit: np.ndarray, y: np.ndarray, s: np.ndarray
    ) -> dict[str, float]:
        q = conformal_log_quantiles(y_fit, s_fit, spec.interval_coverage)
        low, high = IntervalRegressor(None, *q).interval_from_point(s)
        return mx.regression_metrics(y, s, low, high)

    def wrap(self, spec: ServiceSpec, estimator: Any, rule: Rule) -> Any:
        assert rule.quantiles is not None
        return IntervalRegressor(estimator, *rule.quantiles, coverage=spec.interval_coverage)

    def holdout_scores(self, model: Any, X: pd.DataFrame) -> dict[str, np.ndarray]:
        point, low, high = model.predict_interval(X)
        return {"pred": point, "low": low, "high": high}

    def evaluate(
        self, model: Any, scores: Mapping[str, np.ndarray], y: np.ndarray, rounds: int, seed: int
    ) -> dict[str, dict[str, float]]:
        return mx.evaluate_regressor(y, scores["pred"], scores["low"], scores["high"], rounds, seed)

    def decision_params(
        self, threshold: float | None, quantiles: tuple[float, float] | None
    ) -> dict[str, Any]:
        assert quantiles is not None
        return {"interval_q_low": quantiles[0], "interval_q_high": quantiles[1]}

    def output_columns(self, spec: ServiceSpec) -> list[str]:
        t = spec.target
        return [t, f"{t}_low", f"{t}_high"]

    def score_column(self, spec: ServiceSpec) -> str:
        return spec.target

    def outputs(self, predictor: Any, cols: Mapping[str, np.ndarray], explain: bool) -> dict[str, Any]:
        scores = predictor.scores_columns(cols)
        low, high = predictor.model.interval_from_point(scores)
        t = predictor.spec.target
        return {t: scores, f"{t}_low": low, f"{t}_high": high}

    def label_counts(self, outputs: Mapping[str, Any], rows: int) -> dict[str, int]:
        return {"price": rows}  # one label: a regressor's answers are not classes

    def realized_metrics(
        self, spec: ServiceSpec, y: np.ndarray, outputs: Sequence[Mapping[str, Any]], rounds: int, seed: int
    ) -> dict[str, dict[str, float]]:
        t = spec.target
        pred = np.array([o[t] for o in outputs], dtype=float)
        low = np.array([o[f"{t}_low"] for o in outputs], dtype=float)
        high = np.array([o[f"{t}_high"] for o in outputs], dtype=float)
        return mx.evaluate_regressor(y, pred, low, high, rounds, seed)

    def metric_difference(
        self,
        spec: ServiceSpec,
        metric: str,
        y: np.ndarray,
        served: Sequence[Mapping[str, Any]],
        shadow: Sequence[Mapping[str, Any]],
    ) -> tuple[Callable[[np.ndarray], dict[str, float]], np.ndarray | None]:
        t = spec.target
        a = np.array([o[t] for o in served], dtype=float)
        b = np.array([o[t] for o in shadow], dtype=float)

        def diff(i: np.ndarray) -> dict[str, float]:
            return {
                "d": mx.regression_metrics(y[i], b[i])[metric] - mx.regression_metrics(y[i], a[i])[metric]
            }

        return diff, None

    def tree_booster(self, final: Any) -> bool:
        from xgboost import XGBRegressor

        return isinstance(final, XGBRegressor)

    def tree_output(self, final: Any, Xt: Any) -> np.ndarray:
        return np.asarray(final.predict(Xt), dtype=float)

    def card_refit_rule(self, refit_interval: tuple[float, float, float] | None) -> str:
        return "interval calibration below" if refit_interval else "interval quantiles"

    def card_rule_lines(
        self, spec: ServiceSpec, threshold: float | None, refit_interval: tuple[float, float, float] | None
    ) -> list[str]:
        lines = [
            f"- Prediction interval: split-conformal {spec.interval_coverage:.0%} interval "
            "from out-of-fold log-ratio residuals (the figures below)."
        ]
        if refit_interval is not None:
            level, q_low, q_high = refit_interval
            lines.append(
                f"- The registered (refit) model's interval is calibrated on the split model's hold-out "
                f"log-ratio residuals at {level:.0%} (the price times "
                f"[{math.exp(q_low):.3f}, {math.exp(q_high):.3f}]): "
                "refit on more rows, it is more accurate on new rows than the out-of-fold predictions "
                "that calibrate the split model, so the same level would cover more than intended "
                "(`refit_interval_coverage` in params.yaml says how the level was chosen)."
            )
        return lines


TASKS: dict[str, Task] = {t.name: t for t in (ClassificationTask(), RegressionTask())}


def task_named(task: str | Task) -> Task:
    """The strategy of a task name (a strategy is returned as it is).

    Args:
        task: ``"classification"``, ``"regression"``, or a strategy.

    Returns:
        The strategy. Raises ValueError for an unknown name.
    """
    if isinstance(task, Task):
        return task
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}: one of {', '.join(TASKS)}") from None
