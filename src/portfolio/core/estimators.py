"""Small estimator wrappers the core adds around a service's pipeline. They are plain
scikit-learn estimators, so they travel inside the one logged artifact (and skops can load them
once their names are in the trusted list below)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted

# Types of this package that skops may load (in addition to each spec's own).
CORE_TRUSTED_TYPES: tuple[str, ...] = ("portfolio.core.estimators.IntervalRegressor",)


class IntervalRegressor(RegressorMixin, BaseEstimator):
    """A point regressor plus a split-conformal 80% interval (by default).

    The interval comes from quantiles of *log-ratio* residuals ``log(y / ŷ)`` measured on
    out-of-fold predictions, so its width scales with the price (a $40k truck gets a wider band
    than a $4k sedan). ``q_low``/``q_high`` are set by the core's training loop from CV residuals;
    they are never fitted on the rows they are evaluated on.
    """

    def __init__(
        self,
        estimator: Any = None,
        q_low: float = 0.0,
        q_high: float = 0.0,
        coverage: float = 0.8,
    ):
        self.estimator = estimator
        self.q_low = q_low
        self.q_high = q_high
        self.coverage = coverage

    def fit(self, X: Any, y: Any) -> IntervalRegressor:
        self.estimator_ = clone(self.estimator).fit(X, y)
        # What the wrapped estimator learned about its input, as scikit-learn's contract asks.
        for name in ("n_features_in_", "feature_names_in_"):
            if hasattr(self.estimator_, name):
                setattr(self, name, getattr(self.estimator_, name))
        return self

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray(self.estimator_.predict(X), dtype=float)

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        if self.estimator is not None:  # the input it accepts is the wrapped estimator's
            tags.input_tags = self.estimator.__sklearn_tags__().input_tags
        return tags

    def predict_interval(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        point = self.predict(X)
        return point, *self.interval_from_point(point)

    def interval_from_point(self, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        safe = np.maximum(point, 1e-9)
        return safe * np.exp(self.q_low), safe * np.exp(self.q_high)


def conformal_log_quantiles(y: np.ndarray, pred: np.ndarray, coverage: float) -> tuple[float, float]:
    """Residual quantiles for an equal-tailed interval at ``coverage`` (finite-sample corrected)."""
    r = np.log(np.maximum(y, 1e-9)) - np.log(np.maximum(pred, 1e-9))
    n = len(r)
    alpha = 1.0 - coverage
    lo_q = max(0.0, np.floor((alpha / 2) * (n + 1)) / n)
    hi_q = min(1.0, np.ceil((1 - alpha / 2) * (n + 1)) / n)
    return float(np.quantile(r, lo_q)), float(np.quantile(r, hi_q))
