"""The compiled inference path: a champion pipeline turned, at load time, into plain numpy code
that takes validated records straight to the model, without building a pandas DataFrame.

Why not ONNX or treelite: the pipelines are made of a handful of well-understood scikit-learn
steps (imputer, scaler, one-hot encoder) plus tree boosters that already have a fast native entry
point (XGBoost's ``inplace_predict``). Reading the fitted parameters of those steps into numpy
arrays costs no extra dependency, keeps parity exact (same float64 arithmetic, same booster), and
service-specific feature steps join by implementing one method:

    transform_columns(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]

(the columnar twin of their ``transform``). Anything the compiler does not know raises
``NotCompilable``; the service then serves through the pipeline and says so in ``/model``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.ensemble import VotingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from portfolio.core.schema import Field

Columns = dict[str, np.ndarray]
Matrix = np.ndarray


class NotCompilable(Exception):
    """The pipeline contains a step the compiler does not know."""


def to_columns(records: Sequence[dict[str, Any]], fields: Sequence[Field]) -> Columns:
    """Validated records → one numpy array per field (numbers float64 with NaN, others object)."""
    cols: Columns = {}
    for f in fields:
        values = [r.get(f.name) for r in records]
        if f.kind in ("int", "float"):
            cols[f.name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        elif f.kind == "date":
            # Same parsing as schema.coerce (the field's own format, e.g. M/D/YYYY).
            parsed = pd.to_datetime(pd.Series(values, dtype=object), format=f.date_format, errors="coerce")
            cols[f.name] = parsed.to_numpy(dtype="datetime64[ns]")
        else:
            cols[f.name] = np.array(values, dtype=object)
    return cols


def frame_to_columns(frame: Any, fields: Sequence[Field]) -> Columns:
    """A typed DataFrame (from ``schema.validate_frame``) → columns, for batch scoring."""
    cols: Columns = {}
    for f in fields:
        s = frame[f.name]
        if f.kind in ("int", "float"):
            cols[f.name] = s.to_numpy(dtype=np.float64, na_value=np.nan)
        elif f.kind == "date":
            cols[f.name] = s.to_numpy(dtype="datetime64[ns]")
        else:
            cols[f.name] = s.to_numpy(dtype=object)
    return cols


# --------------------------------------------------------------------------- column transformer
def _compile_column_block(steps: list[Any], columns: list[str]) -> Callable[[Columns], Matrix]:
    """One ColumnTransformer branch: a chain of imputer/scaler/one-hot over some columns."""
    ops: list[Callable[[Matrix], Matrix]] = []
    categorical = False
    for step in steps:
        if step == "passthrough" or step is None:
            continue
        if isinstance(step, FunctionTransformer) and step.func is None:
            continue  # a fitted "passthrough" column block
        if isinstance(step, SimpleImputer):
            stats = step.statistics_
            indicator = step.indicator_.features_ if step.add_indicator else None
            is_obj = stats.dtype == object
            categorical = categorical or is_obj

            def impute(
                m: Matrix, stats: Any = stats, indicator: Any = indicator, is_obj: bool = is_obj
            ) -> Matrix:
                missing = pd.isna(m) if is_obj else np.isnan(m)
                out = np.where(missing, stats[None, :], m)
                if indicator is not None:
                    out = np.hstack([out, missing[:, indicator].astype(np.float64)])
                return out

            ops.append(impute)
        elif isinstance(step, StandardScaler):
            mean = step.mean_ if step.with_mean else 0.0
            scale = step.scale_ if step.with_std else 1.0

            def standardize(m: Matrix, mean: Any = mean, scale: Any = scale) -> Matrix:
                return (m.astype(np.float64) - mean) / scale

            ops.append(standardize)
        elif isinstance(step, OneHotEncoder):
            if step.drop is not None or step.handle_unknown not in ("ignore", "infrequent_if_exist"):
                raise NotCompilable("OneHotEncoder with drop/handle_unknown=error")
            if getattr(step, "_infrequent_enabled", False):
                raise NotCompilable("OneHotEncoder with infrequent categories")
            widths = [len(c) for c in step.categories_]

            lookups = [{c: i for i, c in enumerate(cats)} for cats in step.categories_]

            def onehot(
                m: Matrix, cats: Any = step.categories_, lookups: Any = lookups, widths: Any = widths
            ) -> Matrix:
                out = np.zeros((m.shape[0], sum(widths)), dtype=np.float64)
                offset = 0
                for j, (categories, lookup, width) in enumerate(zip(cats, lookups, widths, strict=True)):
                    if m.shape[0] <= 64:
                        # Small requests: a dict lookup per value beats building a Categorical.
                        for i, value in enumerate(m[:, j]):
                            k = lookup.get(value)
                            if k is not None:
                                out[i, offset + k] = 1.0
                    else:
                        codes = pd.Categorical(m[:, j], categories=categories).codes
                        hit = codes >= 0
                        out[np.nonzero(hit)[0], offset + codes[hit]] = 1.0
                    offset += width
                return out

            ops.append(onehot)
            categorical = True
        else:
            raise NotCompilable(f"column step {type(step).__name__}")

    def run(cols: Columns) -> Matrix:
        if categorical:
            m = np.empty((len(cols[columns[0]]), len(columns)), dtype=object)
            for j, c in enumerate(columns):
                m[:, j] = cols[c]
        else:
            m = np.column_stack([cols[c] for c in columns]).astype(np.float64, copy=False)
        for op in ops:
            m = op(m)
        return np.asarray(m, dtype=np.float64)

    return run


def compile_column_transformer(ct: ColumnTransformer) -> Callable[[Columns], Matrix]:
    if ct.sparse_output_:
        raise NotCompilable("sparse ColumnTransformer output")
    blocks: list[Callable[[Columns], Matrix]] = []
    for name, trans, cols in ct.transformers_:
        if name == "remainder" and trans == "drop":
            continue
        if trans == "drop":
            continue
        columns = [str(c) for c in cols]
        if not columns:
            continue
        if isinstance(columns[0], int | np.integer):
            raise NotCompilable("positional ColumnTransformer columns")
        steps = [s for _, s in trans.steps] if isinstance(trans, Pipeline) else [trans]
        blocks.append(_compile_column_block(steps, columns))

    def run(cols: Columns) -> Matrix:
        return np.hstack([b(cols) for b in blocks])

    return run


# ------------------------------------------------------------------------------- estimators
def _xgb_margin_fn(model: Any) -> Callable[[Matrix], np.ndarray]:
    booster = model.get_booster()

    def predict(m: Matrix) -> np.ndarray:
        return np.asarray(booster.inplace_predict(m, validate_features=False), dtype=np.float64)

    return predict


def compile_proba(est: Any) -> Callable[[Matrix], np.ndarray]:
    """Final classifier → function(matrix) → P(class 1)."""
    from xgboost import XGBClassifier

    if isinstance(est, XGBClassifier):
        if est.n_classes_ != 2:
            raise NotCompilable("multiclass XGBoost")
        return _xgb_margin_fn(est)
    if isinstance(est, LogisticRegression) and len(est.classes_) == 2:
        coef, intercept = est.coef_[0], float(est.intercept_[0])

        def logistic(m: Matrix) -> np.ndarray:
            z = m @ coef + intercept
            return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

        return logistic
    if isinstance(est, VotingClassifier):
        if est.voting != "soft":
            raise NotCompilable("hard voting")
        members = [compile_proba(e) for e in est.estimators_]
        weights = np.ones(len(members)) if est.weights is None else np.asarray(est.weights, float)
        weights = weights / weights.sum()

        def vote(m: Matrix) -> np.ndarray:
            return np.asarray(sum(w * f(m) for w, f in zip(weights, members, strict=True)), dtype=np.float64)

        return vote
    if hasattr(est, "predict_proba") and hasattr(est, "classes_") and len(est.classes_) == 2:
        # Any other fitted scikit-learn classifier on a numeric matrix (e.g. RandomForest).
        def generic(m: Matrix) -> np.ndarray:
            return np.asarray(est.predict_proba(m)[:, 1], dtype=np.float64)

        return generic
    raise NotCompilable(f"classifier {type(est).__name__}")


def compile_regressor(est: Any) -> Callable[[Matrix], np.ndarray]:
    from xgboost import XGBRegressor

    if isinstance(est, TransformedTargetRegressor):
        inner = compile_regressor(est.regressor_)
        inverse = est.inverse_func
        if inverse is None:
            raise NotCompilable("TransformedTargetRegressor with a transformer")

        def ttr(m: Matrix) -> np.ndarray:
            return np.asarray(inverse(inner(m)), dtype=np.float64)

        return ttr
    if isinstance(est, XGBRegressor):
        return _xgb_margin_fn(est)
    if hasattr(est, "predict"):

        def generic(m: Matrix) -> np.ndarray:
            return np.asarray(est.predict(m), dtype=np.float64)

        return generic
    raise NotCompilable(f"regressor {type(est).__name__}")


# ------------------------------------------------------------------------------- pipelines
def compile_pipeline(pipe: Any, task: str) -> Callable[[Columns], np.ndarray]:
    """A fitted (sklearn or imblearn) Pipeline → function(columns) → scores."""
    if not isinstance(pipe, Pipeline):  # imblearn's Pipeline subclasses sklearn's
        raise NotCompilable(f"model is a {type(pipe).__name__}, not a Pipeline")
    column_steps: list[Callable[[Columns], Columns]] = []
    encoder: Callable[[Columns], Matrix] | None = None
    for _, step in pipe.steps[:-1]:
        if step is None or step == "passthrough" or hasattr(step, "fit_resample"):
            continue  # samplers only act during fit
        if encoder is not None:
            raise NotCompilable(f"step {type(step).__name__} after the column transformer")
        if isinstance(step, ColumnTransformer):
            encoder = compile_column_transformer(step)
        elif hasattr(step, "transform_columns"):
            column_steps.append(step.transform_columns)
        elif getattr(step, "is_identity_transform", False):
            continue
        else:
            raise NotCompilable(f"feature step {type(step).__name__} has no transform_columns")
    if encoder is None:
        raise NotCompilable("no ColumnTransformer before the estimator")
    final = pipe.steps[-1][1]
    model_fn = compile_proba(final) if task == "classification" else compile_regressor(final)
    enc = encoder

    def run(cols: Columns) -> np.ndarray:
        for f in column_steps:
            cols = f(cols)
        return model_fn(enc(cols))

    return run


def unwrap(model: Any) -> Any:
    """The fitted inner pipeline of the core's wrappers (FixedThresholdClassifier, IntervalRegressor)."""
    inner = getattr(model, "estimator_", None)
    return inner if inner is not None else model
