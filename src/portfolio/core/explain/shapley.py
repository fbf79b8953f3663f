"""Additive explanations of one or more rows for ``POST /explain`` and the training-time global
importance: contributions per ORIGINAL field that add up, with the base value, to the model's
output: log-odds for classifiers, the predicted value (price) for regressors.

- ``tree_shap``: the pipeline ends in an XGBoost booster and every column it sees can be traced
  back to one input field (imputers, scalers, one-hot encoders in a ColumnTransformer): exact
  TreeSHAP from the booster itself (``pred_contribs=True``, no shap package), with one-hot and
  missing-indicator columns summed back into their field.
- ``sampling_shapley`` (any other model, e.g. the telecom soft-voting ensemble, a linear model,
  a log-target regressor, or features derived from several fields): interventional Shapley
  values estimated by sampling feature orders (see ``EXPLAIN_METHODS``). Additivity is exact by
  construction (telescoping sums), the individual contributions are Monte-Carlo estimates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from portfolio.core.explain.substitution import ReferenceProfile, find_step
from portfolio.core.tasks import Task, task_named

TREE_SHAP = "tree_shap"
SAMPLING_SHAPLEY = "sampling_shapley"

EXPLAIN_METHODS: dict[str, str] = {
    TREE_SHAP: (
        "Exact TreeSHAP of the XGBoost booster (pred_contribs=True; path-dependent, the trees' "
        "training cover is the background) on the model's encoded columns; one-hot and "
        "missing-indicator columns are summed back into the field they come from. Base value: the "
        "booster's expected output (plus its float32 rounding residual, about 1e-7 relative)."
    ),
    SAMPLING_SHAPLEY: (
        "Interventional Shapley values estimated by sampling: for each of N (background row, "
        "feature order) pairs, antithetic (every order is also used reversed), the row's fields are "
        "switched from the background row to the explained row one at a time in that order, and a "
        "field's contribution is its average change of the model output. Each pair's changes add "
        "up to output(row) - output(background row), so the contributions add up exactly to "
        "output(row) - base value, the base value being the mean output of the background rows used "
        "(training rows stored with the model). Individual contributions are estimates (they "
        "converge to the Shapley values as N grows); interactions are shared between the fields."
    ),
}


@dataclass
class Explanations:
    """Per-row additive explanations: ``base + contributions.sum(axis=1) == values``."""

    method: str
    output: str  # "log_odds" (classifiers) or "prediction" (regressors)
    base: np.ndarray
    values: np.ndarray
    contributions: pd.DataFrame  # rows x original fields

    @property
    def description(self) -> str:
        return EXPLAIN_METHODS[self.method]


def unwrap_estimator(model: Any) -> Any:
    """The innermost fitted pipeline of the core's wrappers (FixedThresholdClassifier,
    IntervalRegressor, anything exposing ``estimator_``)."""
    for _ in range(10):
        inner = getattr(model, "estimator_", None)
        if inner is None:
            return model
        model = inner
    return model


def _step_sources(step: Any, sources: list[str]) -> list[str] | None:
    """Which input field each output column of one encoder step comes from (None: unknown)."""
    from sklearn.base import OneToOneFeatureMixin
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    if step is None or (isinstance(step, str) and step == "passthrough"):
        return sources
    if isinstance(step, SimpleImputer):
        kept = sources
        if step.strategy != "constant" and not step.keep_empty_features:
            stats = step.statistics_
            kept = [
                s for s, v in zip(sources, stats, strict=True) if not (isinstance(v, float) and np.isnan(v))
            ]
        indicator = [sources[i] for i in step.indicator_.features_] if step.add_indicator else []
        return kept + indicator
    if isinstance(step, OneHotEncoder):
        if getattr(step, "_infrequent_enabled", False):
            return None
        out: list[str] = []
        drop_idx = getattr(step, "drop_idx_", None)
        for j, cats in enumerate(step.categories_):
            width = len(cats) - (1 if drop_idx is not None and drop_idx[j] is not None else 0)
            out += [sources[j]] * width
        return out
    if isinstance(step, OneToOneFeatureMixin):
        return sources
    return None


def column_sources(ct: Any) -> list[str] | None:
    """For a fitted ColumnTransformer: the input column behind each output column, or None when
    a step's mapping is unknown."""
    from sklearn.pipeline import Pipeline

    out: list[str] = []
    names_in = [str(c) for c in getattr(ct, "feature_names_in_", [])]
    for _, trans, cols in ct.transformers_:
        if isinstance(trans, str) and trans == "drop":
            continue
        columns = [names_in[c] if isinstance(c, int | np.integer) else str(c) for c in np.atleast_1d(cols)]
        if not columns:
            continue
        sources: list[str] | None = columns
        steps = [s for _, s in trans.steps] if isinstance(trans, Pipeline) else [trans]
        for step in steps:
            sources = _step_sources(step, sources) if sources is not None else None
        if sources is None:
            return None
        out += sources
    return out


def _tree_shap(task: Task, model: Any, X: pd.DataFrame) -> Explanations | None:
    """Exact TreeSHAP when the model allows it (see above), else None."""
    from sklearn.compose import ColumnTransformer
    from xgboost import DMatrix

    pipe = unwrap_estimator(model)
    steps = getattr(pipe, "steps", None)
    if not steps:
        return None
    final = steps[-1][1]
    if not task.tree_booster(final):
        return None
    Xt: Any = X
    ct = None
    for _, step in steps[:-1]:
        if step is None or (isinstance(step, str) and step == "passthrough"):
            continue
        if hasattr(step, "fit_resample") or getattr(step, "is_identity_transform", False):
            continue  # samplers act during fit only; identity steps change nothing
        if ct is not None or not isinstance(step, ColumnTransformer):
            return None  # derived features: columns cannot be traced back to single fields
        ct = step
        Xt = step.transform(Xt)
    if ct is None:
        return None
    sources = column_sources(ct)
    fields = list(X.columns)
    if sources is None or any(s not in fields for s in sources) or len(sources) != np.shape(Xt)[1]:
        return None
    booster = final.get_booster()
    dm = DMatrix(Xt)
    contribs = np.asarray(booster.predict(dm, pred_contribs=True), dtype=np.float64)
    if contribs.ndim != 2 or contribs.shape[1] != len(sources) + 1:
        return None
    per_field = np.zeros((len(X), len(fields)))
    index = {f: i for i, f in enumerate(fields)}
    for j, src in enumerate(sources):
        per_field[:, index[src]] += contribs[:, j]
    # The booster's own output in the explained scale: a mismatch (e.g. early stopping, a link
    # function) means TreeSHAP does not explain what the service returns → use sampling.
    own = task.tree_output(final, Xt)
    residual = own - (contribs[:, -1] + per_field.sum(axis=1))
    if np.any(np.abs(residual) > 1e-4 * np.maximum(1.0, np.abs(own))):
        return None
    # XGBoost sums in float32: the rounding residual (~1e-7 relative, e.g. 0.002 on a $20k price)
    # is folded into the base value, so the contributions add up exactly to the returned output.
    return Explanations(
        TREE_SHAP,
        task.explain_scale,
        contribs[:, -1] + residual,
        own,
        pd.DataFrame(per_field, columns=fields, index=X.index),
    )


def _path_frame(
    x: pd.DataFrame, background: pd.DataFrame, bg_idx: np.ndarray, mask: np.ndarray
) -> pd.DataFrame:
    """Rows of every (pair, step) path for one explained row: field j from ``x`` where mask."""
    steps = mask.shape[1]
    cols: dict[str, Any] = {}
    for j, c in enumerate(x.columns):
        xv = x[c].to_numpy()
        bv = background[c].to_numpy()[bg_idx]
        col = np.repeat(bv[:, None], steps, axis=1)
        if col.dtype != xv.dtype:
            col = col.astype(object)
        col[mask[:, :, j]] = xv[0]
        cols[c] = col.reshape(-1)
    return pd.DataFrame(cols).astype(x.dtypes.to_dict())


def sampling_shapley(
    score: Callable[[pd.DataFrame], Any],
    X: pd.DataFrame,
    background: pd.DataFrame,
    *,
    task: Task | str,
    n_pairs: int = 64,
    seed: int = 0,
    block_rows: int = 50_000,
) -> Explanations:
    """Sampling (interventional) Shapley values, exactly additive; see ``EXPLAIN_METHODS``.

    ``score`` maps a typed frame to P(class 1) (classification) or the prediction (regression);
    ``background`` holds typed reference rows with the same columns as ``X``. The same seed gives
    the same orders and background rows for every explained row (one shared base value)."""
    if len(background) == 0:
        raise ValueError("the sampling explainer needs at least one background row")
    strategy = task_named(task)
    cols = list(X.columns)
    background = background[cols].reset_index(drop=True)
    d = len(cols)
    half = max(1, n_pairs // 2)
    rng = np.random.default_rng(seed)
    perms = np.array([rng.permutation(d) for _ in range(half)])
    perms = np.vstack([perms, perms[:, ::-1]])
    bg_idx = np.tile(rng.integers(0, len(background), size=half), 2)
    pairs = len(perms)
    pos = np.empty_like(perms)
    pos[np.arange(pairs)[:, None], perms] = np.arange(d)[None, :]
    mask = pos[:, None, :] < np.arange(d + 1)[None, :, None]  # (pairs, steps, fields)

    def to_scale(s: Any) -> np.ndarray:
        return strategy.to_explain_scale(np.asarray(s, dtype=float))

    per_row = pairs * (d + 1)
    rows_per_block = max(1, block_rows // per_row)
    contributions = np.zeros((len(X), d))
    base = np.zeros(len(X))
    values = np.zeros(len(X))
    for start in range(0, len(X), rows_per_block):
        block = X.iloc[start : start + rows_per_block]
        frames = [_path_frame(block.iloc[[i]], background, bg_idx, mask) for i in range(len(block))]
        f_all = to_scale(score(pd.concat(frames, ignore_index=True))).reshape(len(block), pairs, d + 1)
        for i in range(len(block)):
            f = f_all[i]
            diffs = f[:, 1:] - f[:, :-1]  # step t switches field perms[k, t]
            phi = np.zeros(d)
            np.add.at(phi, perms.reshape(-1), diffs.reshape(-1))
            contributions[start + i] = phi / pairs
            base[start + i] = f[:, 0].mean()
            values[start + i] = f[:, -1].mean()
    return Explanations(
        SAMPLING_SHAPLEY,
        strategy.explain_scale,
        base,
        values,
        pd.DataFrame(contributions, columns=cols, index=X.index),
    )


def _default_score(task: Task, model: Any) -> Callable[[pd.DataFrame], Any]:
    return lambda frame: task.scores(model, frame)


def explain_frame(
    task: Task | str,
    model: Any,
    X: pd.DataFrame,
    *,
    score: Callable[[pd.DataFrame], Any] | None = None,
    background: pd.DataFrame | None = None,
    n_pairs: int = 64,
    seed: int = 0,
    method: str = "auto",
) -> Explanations:
    """Explain typed rows ``X`` (columns = the service's fields). ``method``: "auto" (TreeSHAP
    when possible, else sampling), ``tree_shap`` or ``sampling_shapley``. The sampling method
    scores with ``score`` (default: the model's own predict_proba / predict) against
    ``background`` rows (default: the pipeline's ReferenceProfile, when it has one)."""
    if method not in ("auto", TREE_SHAP, SAMPLING_SHAPLEY):
        raise ValueError(f"unknown explanation method {method!r}")
    task = task_named(task)
    if method in ("auto", TREE_SHAP):
        exact = _tree_shap(task, model, X)
        if exact is not None:
            return exact
        if method == TREE_SHAP:
            raise ValueError(
                "TreeSHAP does not apply to this model (not an XGBoost pipeline on field columns)"
            )
    if background is None:
        profile = find_step(model, ReferenceProfile)
        if profile is None:
            raise ValueError("no background rows for the sampling explainer")
        background = pd.DataFrame([{c: profile.reference_.get(c) for c in X.columns}]).astype(
            X.dtypes.to_dict()
        )
    return sampling_shapley(
        score or _default_score(task, model), X, background, task=task, n_pairs=n_pairs, seed=seed
    )


def global_importance(exp: Explanations) -> dict[str, float]:
    """Mean absolute contribution per field (the SHAP summary importance)."""
    return {str(c): float(v) for c, v in exp.contributions.abs().mean(axis=0).items()}


def _json_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float | np.floating):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, pd.Timestamp | np.datetime64):
        ts = pd.Timestamp(value)
        return None if pd.isna(ts) else ts.date().isoformat()
    return value


def explanation_body(exp: Explanations, X: pd.DataFrame, row: int = 0) -> dict[str, Any]:
    """One row's explanation as JSON: contributions sorted by absolute size."""
    contrib = exp.contributions.iloc[row]
    items = [
        {"feature": c, "value": _json_value(X[c].iloc[row]), "contribution": float(contrib[c])}
        for c in exp.contributions.columns
    ]
    items.sort(key=lambda it: -abs(it["contribution"]))
    return {
        "method": exp.method,
        "method_description": exp.description,
        "output": exp.output,
        "base_value": float(exp.base[row]),
        "output_value": float(exp.values[row]),
        "contributions": items,
    }
