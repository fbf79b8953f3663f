"""Per-prediction explanations for any classifier pipeline on the raw (original) features.

Method ("reference substitution", a documented approximation of SHAP-style attributions): a
``ReferenceProfile`` step at the head of the pipeline remembers a *reference customer* from the
training rows (median of each numeric column, most frequent value of every other column). The
contribution of feature ``j`` to one row's score is

    logit(p(x)) - logit(p(x with feature j replaced by its reference value))

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

from portfolio.core.fastpath.columns import SMALL_BATCH_ROWS, filled_like
from portfolio.core.metrics import logit

# Types of this module that skops may load (a spec using them lists these in ``trusted_types``).
EXPLAIN_TRUSTED_TYPES: tuple[str, ...] = (
    "portfolio.core.explain.substitution.ReferenceProfile",
    "portfolio.core.explain.ReferenceProfile",  # registered before the package split
)


class ReferenceProfile(TransformerMixin, BaseEstimator):
    """Pass-through step that records the reference value of every input column at fit time:
    the median for numeric columns, the most frequent value for the others (missing values are
    ignored). Put it first in a pipeline so the reference describes the raw training rows."""

    # It changes nothing at prediction time: the compiled fast path (core/fastpath/) skips it.
    is_identity_transform = True

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


Columns = dict[str, np.ndarray]


def substitution_scores(
    score: Callable[[Columns], Any],
    cols: Columns,
    substitutes: Mapping[str, Any],
    *,
    block_rows: int = 2000,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the rows, and (rows x len(substitutes)) of each row with one column set to its
    substitute, by scoring every substituted row: ONE model call per block, the block's own
    rows stacked with their single-column substitutions (a one-record request pays one call's
    fixed cost, not two). Any ``score``; the compiled fast path has a faster equivalent
    (``fastpath.pipeline.CompiledPipeline.substitutions``)."""
    names = list(substitutes)
    n = len(next(iter(cols.values())))
    proba = np.zeros(n)
    out = np.zeros((n, len(names)))
    k = len(names)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        m = stop - start
        variants: Columns = {}
        for c, values in cols.items():
            block = values[start:stop]
            j = names.index(c) if c in names else -1
            # Variants 0..k-1 substitute one column (c takes its substitute in variant j);
            # variant k is the row itself.
            if m <= 64 and block.dtype.kind in "biufO":  # a request: lists beat np.tile (~1 vs 5 µs)
                listed = block.tolist() * (k + 1)
                if j >= 0:
                    listed[j * m : (j + 1) * m] = filled_like(block, substitutes[c], 1).tolist() * m
                variants[c] = np.array(listed, dtype=block.dtype)
                continue
            stacked = np.tile(block, k + 1)
            if j >= 0:
                stacked[j * m : (j + 1) * m] = filled_like(block, substitutes[c], m)
            variants[c] = stacked
        p = np.asarray(score(variants), dtype=float).reshape(k + 1, m)
        proba[start:stop] = p[k]
        out[start:stop] = p[:k].T
    return proba, out


def reference_scores_and_contributions(
    score: Callable[[Columns], Any],
    cols: Columns,
    reference: Mapping[str, Any],
    *,
    columns: Sequence[str] | None = None,
    block_rows: int = 2000,
) -> tuple[np.ndarray, np.ndarray]:
    """P(class 1) per row and the rows x ``columns`` log-odds contribution matrix (see the
    module's docstring), by scoring every substituted row."""
    names = list(columns or cols)
    proba, substituted = substitution_scores(
        score, cols, {c: reference[c] for c in names}, block_rows=block_rows
    )
    return proba, contributions_from_scores(proba, substituted)


def contributions_from_scores(proba: np.ndarray, substituted: np.ndarray) -> np.ndarray:
    """Log-odds contribution of each substituted column: logit(p(x)) - logit(p(x with it at the
    reference)); exactly 0 where the row already holds the reference value."""
    return np.asarray(logit(proba)[:, None] - logit(substituted))


def reference_contributions_columns(
    score: Callable[[Columns], Any],
    cols: Columns,
    reference: Mapping[str, Any],
    *,
    columns: Sequence[str] | None = None,
    block_rows: int = 2000,
) -> np.ndarray:
    """Columnar core of ``reference_contributions`` (rows x ``columns`` log-odds matrix): ``cols``
    maps each input column to a numpy array, and ``score`` takes such columns. Every
    single-column substitution of a block of rows is stacked into one set of columns, so the model
    is called once per block. Serving uses this directly (no DataFrame on the hot path)."""
    return reference_scores_and_contributions(score, cols, reference, columns=columns, block_rows=block_rows)[
        1
    ]


def reference_contributions(
    score: Callable[[pd.DataFrame], Any],
    X: pd.DataFrame,
    reference: Mapping[str, Any],
    *,
    columns: Sequence[str] | None = None,
    block_rows: int = 2000,
) -> pd.DataFrame:
    """Log-odds contribution of each column for each row (rows x columns, same order as ``X``).

    ``score`` maps a frame like ``X`` to P(class 1) per row (1-D)."""
    names = [str(c) for c in (columns or X.columns)]
    dtypes = X.dtypes.to_dict()
    cols = {str(c): X[c].to_numpy(dtype=object) for c in X.columns}

    def score_columns(c: Columns) -> Any:
        return score(pd.DataFrame(c, columns=list(X.columns)).astype(dtypes))

    values = reference_contributions_columns(
        score_columns, cols, reference, columns=names, block_rows=block_rows
    )
    return pd.DataFrame(values, columns=names, index=X.index)


def _format_value(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):  # NaN is the only float unequal to itself (np.isnan: ~5x slower)
        return "missing" if value != value else f"{float(value):g}"
    if isinstance(value, np.floating):
        return f"{float(value):g}"
    return str(value)


def _value_labels(name: str, values: np.ndarray) -> list[str]:
    """``"name=value"`` for each value, each distinct float or text value formatted once (a
    batch repeats its values); values of other types one by one, so that equal values of
    different types (1 and True) never share a label, and -0.0 is printed "-0" as a request
    prints it (pd.factorize, used before, took it for 0.0)."""
    listed = values.tolist()
    if values.dtype.kind == "f" or (values.dtype == object and set(map(type, listed)) <= {str, type(None)}):
        # NaN: each NaN object is its own key (a dict finds a key by identity first); 0.0 and
        # -0.0 are one key but print differently, so zeros are formatted one by one.
        texts = {v: f"{name}={_format_value(v)}" for v in set(listed)}
        if 0.0 in texts:
            return [f"{name}={_format_value(v)}" if v == 0 else texts[v] for v in listed]
        return [texts[v] for v in listed]
    return [f"{name}={_format_value(v)}" for v in listed]


def _signed_2dp(values: np.ndarray) -> np.ndarray:
    """``f"{v:+.2f}"`` of every value, formatting each distinct hundredth once: ``rint(100 v)``
    is that rounding except within float error of a tie (x.xx5), where the value is formatted
    itself, as are values that round to zero (Python prints -0.00 for a small negative one)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    scaled = flat * 100.0
    hundredths = np.rint(scaled)
    itself = np.abs(np.abs(scaled - hundredths) - 0.5) <= 1e-9 * np.maximum(1.0, np.abs(scaled))
    itself |= (hundredths == 0) | ~np.isfinite(scaled) | (np.abs(scaled) > 2.0**52)
    uniques, inverse = np.unique(np.where(itself, 1.0, hundredths), return_inverse=True)
    out = np.array([f"{u / 100:+.2f}" for u in uniques.tolist()], dtype=object)[inverse]
    for i in np.flatnonzero(itself).tolist():
        out[i] = f"{flat[i]:+.2f}"
    return out.reshape(np.shape(values))


def _top_factors_rows(
    values: np.ndarray, names: Sequence[str], cols: Columns, k: int, min_abs: float
) -> list[str]:
    """``top_factors_columns`` row by row and value by value (no per-column numpy calls)."""
    order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(values, order, axis=1).tolist()
    listed: dict[int, list[Any]] = {}  # column → its values as Python objects, when first needed
    texts: list[str] = []
    for i, (idx, cs) in enumerate(zip(order.tolist(), top, strict=True)):
        parts = []
        for j, c in zip(idx, cs, strict=True):
            if abs(c) < min_abs:
                continue
            column = listed.get(j)
            if column is None:
                column = listed[j] = np.asarray(cols[names[j]]).tolist()
            parts.append(f"{names[j]}={_format_value(column[i])} ({c:+.2f})")
        texts.append("; ".join(parts))
    return texts


def top_factors_columns(
    contributions: np.ndarray, names: Sequence[str], cols: Columns, k: int = 3, min_abs: float = 1e-6
) -> list[str]:
    """Columnar core of ``top_factors``: ``contributions`` is rows x ``names``. Vectorised by
    column (a batch of 1,000 TelecomAI customers: the labels of each column's values, then
    each distinct contribution's text, then one join per row)."""
    values = np.asarray(contributions, dtype=np.float64)
    n = values.shape[0]
    k = min(k, values.shape[1]) if values.ndim == 2 else 0
    if n == 0 or k == 0:
        return [""] * n
    if n <= SMALL_BATCH_ROWS:  # a request: value by value (one row: ~45 vs ~270 µs)
        return _top_factors_rows(values, names, cols, k, min_abs)
    order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(values, order, axis=1)
    labels = np.empty((n, k), dtype=object)
    for j in np.unique(order).tolist():
        at = order == j
        labels[at] = _value_labels(names[j], np.asarray(cols[names[j]])[np.nonzero(at)[0]])
    numbers = _signed_2dp(top)
    parts = [
        f"{label} ({number})"
        for label, number in zip(labels.ravel().tolist(), numbers.ravel().tolist(), strict=True)
    ]
    texts = ["; ".join(row) for row in zip(*(parts[s::k] for s in range(k)), strict=True)]
    small = np.abs(top) < min_abs  # a feature at (or next to) its reference value: never listed
    for i in np.flatnonzero(small.any(axis=1)).tolist():
        texts[i] = "; ".join(
            p for p, drop in zip(parts[i * k : (i + 1) * k], small[i], strict=True) if not drop
        )
    return texts


def top_factors(contributions: pd.DataFrame, X: pd.DataFrame, k: int = 3, min_abs: float = 1e-6) -> list[str]:
    """Per row: the ``k`` features with the largest absolute contribution, as readable text
    ``"Contract=Month-to-month (+0.93); tenure=2 (+0.61); …"`` (sign: raises/lowers the score).
    A feature equal to its reference value contributes nothing and is never listed."""
    names = [str(c) for c in contributions.columns]
    cols = {c: X[c].to_numpy(dtype=object) for c in names}
    return top_factors_columns(contributions.to_numpy(), names, cols, k, min_abs)
