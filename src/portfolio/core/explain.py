"""Per-prediction explanations for any classifier pipeline on the raw (original) features.

Method ("reference substitution", a documented approximation of SHAP-style attributions): a
``ReferenceProfile`` step at the head of the pipeline remembers a *reference customer* from the
training rows (median of each numeric column, most frequent value of every other column). The
contribution of feature ``j`` to one row's score is

    logit(p(x)) − logit(p(x with feature j replaced by its reference value))

i.e. how many log-odds the row's own value of ``j`` adds to (positive) or removes from (negative)
its score compared with a typical value, all other features held at the row's values. It works on
the original feature names (never one-hot columns), needs one extra model call per feature (rows are
batched, so it is vectorised), and does not need SHAP. Like any one-at-a-time attribution it
ignores interactions: contributions need not add up to the total difference from the reference,
and correlated features (e.g. tenure and total charges) share credit unevenly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

# Types of this module that skops may load (a spec using them lists these in ``trusted_types``).
EXPLAIN_TRUSTED_TYPES: tuple[str, ...] = ("portfolio.core.explain.ReferenceProfile",)


class ReferenceProfile(TransformerMixin, BaseEstimator):
    """Pass-through step that records the reference value of every input column at fit time:
    the median for numeric columns, the most frequent value for the others (missing values are
    ignored). Put it first in a pipeline so the reference describes the raw training rows."""

    def fit(self, X: pd.DataFrame, y: Any = None) -> ReferenceProfile:
        reference: dict[str, Any] = {}
        for col in X.columns:
            values = X[col].dropna()
            if len(values) == 0:
                reference[str(col)] = None
            elif pd.api.types.is_numeric_dtype(values):
                reference[str(col)] = float(values.median())
            else:
                reference[str(col)] = values.mode().iloc[0]
        self.reference_ = reference
        self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        self.n_features_in_ = len(X.columns)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return X


def find_step(model: Any, cls: type) -> Any | None:
    """The first fitted step of type ``cls`` inside ``model`` (wrappers with ``estimator_``,
    pipelines with ``steps``), or None."""
    if isinstance(model, cls):
        return model
    inner = getattr(model, "estimator_", None)
    if inner is not None:
        return find_step(inner, cls)
    for _, step in getattr(model, "steps", []):
        found = find_step(step, cls)
        if found is not None:
            return found
    return None


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    return np.asarray(np.log(p / (1 - p)))


def reference_contributions(
    predict_proba: Callable[[pd.DataFrame], Any],
    X: pd.DataFrame,
    reference: Mapping[str, Any],
    *,
    base_proba: np.ndarray | None = None,
    columns: Sequence[str] | None = None,
    block_rows: int = 2000,
) -> pd.DataFrame:
    """Log-odds contribution of each column for each row (rows × columns, same order as ``X``).

    For a block of rows, every single-column substitution is stacked into one frame so the model
    is called once per block, not once per row or per column."""
    cols = list(columns or X.columns)
    n = len(X)
    base = logit(
        np.asarray(predict_proba(X)[:, 1], dtype=float) if base_proba is None else np.asarray(base_proba)
    )
    out = np.zeros((n, len(cols)))
    for start in range(0, n, block_rows):
        block = X.iloc[start : start + block_rows].reset_index(drop=True)
        m = len(block)
        variants = pd.concat([block.assign(**{c: reference[c]}) for c in cols], ignore_index=True)
        variants = variants.astype(X.dtypes.to_dict())
        p = np.asarray(predict_proba(variants)[:, 1], dtype=float).reshape(len(cols), m).T
        out[start : start + m] = base[start : start + m, None] - logit(p)
    return pd.DataFrame(out, columns=cols, index=X.index)


def _format_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "missing"
    if isinstance(value, float | np.floating):
        return f"{float(value):g}"
    return str(value)


def top_factors(contributions: pd.DataFrame, X: pd.DataFrame, k: int = 3, min_abs: float = 1e-6) -> list[str]:
    """Per row: the ``k`` features with the largest absolute contribution, as readable text
    ``"Contract=Month-to-month (+0.93); tenure=2 (+0.61); …"`` (sign: raises/lowers the score).
    A feature equal to its reference value contributes nothing and is never listed."""
    values = contributions.to_numpy()
    cols = list(contributions.columns)
    order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]
    raw = {c: X[c].to_numpy(dtype=object) for c in cols}
    texts: list[str] = []
    for i, idx in enumerate(order):
        parts = []
        for j in idx:
            c = values[i, j]
            if abs(c) < min_abs:
                continue
            parts.append(f"{cols[j]}={_format_value(raw[cols[j]][i])} ({c:+.2f})")
        texts.append("; ".join(parts))
    return texts
