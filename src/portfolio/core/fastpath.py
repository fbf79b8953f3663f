"""The compiled inference path: a champion pipeline turned, at load time, into numpy code (and a
numba-compiled tree walk) that takes validated records straight to the model, without building a
pandas DataFrame.

Why not ONNX or treelite: the pipelines are made of a handful of well-understood scikit-learn
steps (imputer, scaler, one-hot encoder) plus tree ensembles. Reading the fitted parameters of
those steps into numpy arrays keeps parity exact (same float64 arithmetic, the trees' own float32
splits and summation order) and needs no converter for the custom feature steps; treelite's
interpreter (GTIL) took ~210 µs for one row of an 800-tree booster against ~60 µs for the numba
walk here, and differed from XGBoost by $0.09. Service-specific feature steps join by
implementing one method:

    transform_columns(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]

(the columnar twin of their ``transform``). Anything the compiler does not know raises
``NotCompilable``; the service then serves through the pipeline and says so in ``/model``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
    VotingClassifier,
    VotingRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from portfolio.core.schema import Field, parse_date

Columns = dict[str, np.ndarray]
Matrix = np.ndarray


# Requests up to this many rows take per-value paths (cached date strptime, dict one-hot), free
# of per-call library overhead; larger ones use vectorised pandas, which is faster there.
SMALL_BATCH_ROWS = 64
# Up to this many rows XGBoost models take the compiled walk below; above it the library's
# multi-threaded ``inplace_predict`` wins (800 trees of depth 6: 16 rows 0.9 vs 1.6 ms, 64 rows
# 4.1 vs 3.1 ms).
XGB_WALK_MAX_ROWS = 32


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
            if all(v is None for v in values):  # optional and omitted: no parsing to do
                cols[f.name] = np.full(len(values), np.datetime64("NaT"), dtype="datetime64[ns]")
                continue
            if len(values) <= SMALL_BATCH_ROWS:  # API requests: per-value strptime, cached
                dates = [None if v is None else parse_date(v, f.date_format) for v in values]
                cols[f.name] = np.array(
                    [np.datetime64("NaT") if d is None else np.datetime64(d, "ns") for d in dates],
                    dtype="datetime64[ns]",
                )
                continue
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
            offsets = np.cumsum([0, *widths[:-1]]).tolist()
            # value → output column (offset included), for the per-value path of small requests
            lookups = [
                {c: off + i for i, c in enumerate(cats)}
                for off, cats in zip(offsets, step.categories_, strict=True)
            ]
            # Object-dtype indexes: a hash lookup, and no string-dtype inference (pandas 3).
            indexes = [pd.Index(np.asarray(cats, dtype=object), dtype=object) for cats in step.categories_]

            def onehot(
                m: Matrix,
                indexes: Any = indexes,
                lookups: Any = lookups,
                offsets: Any = offsets,
                total: int = sum(widths),
            ) -> Matrix:
                out = np.zeros((m.shape[0], total), dtype=np.float64)
                if m.shape[0] <= SMALL_BATCH_ROWS:
                    # Small requests: one dict lookup per value and a single scatter beat
                    # building an index per column (flat positions row * total + column).
                    hits = [
                        r * total + k
                        for j, lookup in enumerate(lookups)
                        for r, value in enumerate(m[:, j].tolist())
                        if (k := lookup.get(value, -1)) >= 0
                    ]
                    out.reshape(-1)[hits] = 1.0
                    return out
                for j, (index, offset) in enumerate(zip(indexes, offsets, strict=True)):
                    codes = index.get_indexer(pd.Index(m[:, j], dtype=object))
                    hit = codes >= 0
                    out[np.nonzero(hit)[0], offset + codes[hit]] = 1.0
                return out

            ops.append(onehot)
            categorical = True
        else:
            raise NotCompilable(f"column step {type(step).__name__}")

    def run(cols: Columns) -> Matrix:
        # Filled column by column: one copy at any size (np.column_stack costs ~0.5 µs per
        # column on a request; building rows then transposing copies a 100k-row chunk twice).
        m = np.empty((len(cols[columns[0]]), len(columns)), dtype=object if categorical else np.float64)
        for j, c in enumerate(columns):
            m[:, j] = cols[c]
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


# Trees walked side by side by the compiled kernel: their memory reads overlap instead of each
# waiting for the last (a request's trees do not fit in the CPU caches between requests).
_INTERLEAVED_TREES = 32


@functools.cache
def _tree_kernel() -> Callable[..., np.ndarray]:
    """The tree walk, compiled to machine code by numba on first use (about a second; servers
    warm their predictor at load so no request pays it). Compiled code is cached on disk when numba
    finds a writable cache folder (next to this file, else ``NUMBA_CACHE_DIR`` or the user
    cache), so later processes load it in milliseconds."""
    import numba

    def leaf_values(
        x: np.ndarray, roots: np.ndarray, nodes: np.ndarray, value: np.ndarray, depth: int
    ) -> np.ndarray:
        # nodes: int32 rows (feature, left, right, threshold's float32 bits); feature is stored
        # as ~feature (negative) when a missing value goes left.
        thresholds = nodes.view(np.float32)
        n_trees = roots.shape[0]
        out = np.empty((x.shape[0], n_trees), dtype=np.float64)
        node = np.empty(_INTERLEAVED_TREES, dtype=np.intp)
        for r in range(x.shape[0]):
            for first in range(0, n_trees, _INTERLEAVED_TREES):
                width = min(_INTERLEAVED_TREES, n_trees - first)
                for j in range(width):
                    node[j] = roots[first + j]
                for _ in range(depth):  # leaves point to themselves: extra steps change nothing
                    for j in range(width):
                        nd = node[j]
                        f = nodes[nd, 0]
                        v = x[r, ~f] if f < 0 else x[r, f]
                        left = f < 0 if np.isnan(v) else v < thresholds[nd, 3]
                        node[j] = nodes[nd, 1] if left else nodes[nd, 2]
                for j in range(width):
                    out[r, first + j] = value[node[j]]
        return out

    try:
        kernel = numba.njit(nogil=True, cache=True)(leaf_values)
    except RuntimeError:  # no writable cache folder anywhere: compile in memory each process
        kernel = numba.njit(nogil=True)(leaf_values)
    return cast(Callable[..., np.ndarray], kernel)


class _TreeArrays:
    """Many decision trees packed into one int32 array of 16-byte nodes (ids offset per tree; a
    leaf's children are itself), walked by the compiled kernel above. Small requests take this
    walk instead of a library call: scikit-learn's forest ``predict`` costs ~10 ms for 100 trees
    on one row and XGBoost's ``inplace_predict`` ~0.3 ms of fixed overhead per call.

    Inputs are rounded to float32 first, as both libraries do, so every split can be a float32
    ``x < t``: XGBoost's own rule on its float32 thresholds; for scikit-learn's ``x <= t`` (t in
    float64), t becomes the float32 just above the largest float32 <= t, which sends every
    float32 x the same way. NaN follows the node's default direction."""

    def __init__(
        self,
        feature: list[np.ndarray],
        threshold: list[np.ndarray],
        left: list[np.ndarray],
        right: list[np.ndarray],
        nan_left: list[np.ndarray],
        value: list[np.ndarray],
        depth: int,
        strict: bool,
    ):
        offsets = np.cumsum([0] + [len(f) for f in feature[:-1]])
        lefts, rights = [], []
        for off, lc, rc in zip(offsets, left, right, strict=True):
            own = np.arange(off, off + len(lc))
            leaf = lc < 0
            lefts.append(np.where(leaf, own, lc + off))
            rights.append(np.where(leaf, own, rc + off))
        t = np.concatenate(threshold).astype(np.float64)
        t32 = t.astype(np.float32)
        if not strict:
            t32 = np.where(t32 > t, np.nextafter(t32, np.float32(-np.inf)), t32)  # largest <= t
            t32 = np.nextafter(t32, np.float32(np.inf))
        features = np.concatenate(feature).astype(np.int64)
        features = np.where(np.concatenate(left) < 0, 0, features)
        nodes = np.empty((len(t32), 4), dtype=np.int32)
        nodes[:, 0] = np.where(np.concatenate(nan_left).astype(bool), ~features, features)
        nodes[:, 1] = np.concatenate(lefts)
        nodes[:, 2] = np.concatenate(rights)
        nodes.view(np.float32)[:, 3] = t32
        self.nodes = nodes
        self.value = np.ascontiguousarray(np.concatenate(value), dtype=np.float64)
        self.roots = np.ascontiguousarray(offsets, dtype=np.intp)
        self.depth = int(depth)

    def leaf_values(self, m: Matrix) -> np.ndarray:
        """rows x trees matrix of the leaf value each row reaches in each tree."""
        x = np.ascontiguousarray(np.asarray(m, dtype=np.float32), dtype=np.float64)
        return _tree_kernel()(x, self.roots, self.nodes, self.value, self.depth)


def _missing_go_left(t: Any) -> np.ndarray:
    mgl = getattr(t, "missing_go_to_left", None)
    return np.zeros(t.node_count, bool) if mgl is None else np.asarray(mgl, bool)


def _sklearn_trees(trees: Sequence[Any], leaf_value: Callable[[Any], np.ndarray]) -> _TreeArrays:
    ts = [tree.tree_ for tree in trees]
    return _TreeArrays(
        feature=[t.feature for t in ts],
        threshold=[t.threshold for t in ts],
        left=[t.children_left for t in ts],
        right=[t.children_right for t in ts],
        nan_left=[_missing_go_left(t) for t in ts],
        value=[leaf_value(t) for t in ts],
        depth=max(int(t.max_depth) for t in ts),
        strict=False,
    )


# The compiled walk beats scikit-learn's forest predict (two threads) up to several thousand rows
# (100 trees of depth 6: 1 row 0.01 vs ~40 ms, 1,000 rows 6 vs 59 ms, 8,000 rows 50 vs 69 ms,
# 20,000 rows 123 vs 79 ms).
FOREST_WALK_MAX_ROWS = 8192


def _compile_forest_proba(est: Any) -> Callable[[Matrix], np.ndarray]:
    def p_positive(t: Any) -> np.ndarray:
        v = t.value[:, 0, :]  # per-node class weights (fractions since scikit-learn 1.4)
        return np.asarray(v[:, 1] / np.maximum(v.sum(axis=1), 1e-300), dtype=np.float64)

    trees = _sklearn_trees(est.estimators_, p_positive)

    def proba(m: Matrix) -> np.ndarray:
        if m.shape[0] > FOREST_WALK_MAX_ROWS:
            return np.asarray(est.predict_proba(m)[:, 1], dtype=np.float64)
        return np.asarray(trees.leaf_values(m).mean(axis=1), dtype=np.float64)

    return proba


def _compile_forest_regressor(est: Any) -> Callable[[Matrix], np.ndarray]:
    if est.n_outputs_ != 1:
        raise NotCompilable("multi-output forest")
    trees = _sklearn_trees(est.estimators_, lambda t: np.asarray(t.value[:, 0, 0], dtype=np.float64))

    def predict(m: Matrix) -> np.ndarray:
        if m.shape[0] > FOREST_WALK_MAX_ROWS:
            return np.asarray(est.predict(m), dtype=np.float64)
        return np.asarray(trees.leaf_values(m).mean(axis=1), dtype=np.float64)

    return predict


def _xgb_trees(booster: Any) -> tuple[_TreeArrays, str]:
    """The booster's trees (from its JSON model) and its objective; NotCompilable for anything
    but plain numeric trees with one output."""
    import json

    learner = json.loads(booster.save_raw("json"))["learner"]
    objective = learner["objective"]["name"]
    gb = learner["gradient_booster"]
    params = learner["learner_model_param"]
    if gb.get("name") != "gbtree" or params.get("num_class") not in ("0", "1"):
        raise NotCompilable("XGBoost model other than single-output gbtree")
    if params.get("num_target", "1") != "1":
        raise NotCompilable("multi-target XGBoost")
    trees = gb["model"]["trees"]
    if any(any(st != 0 for st in t["split_type"]) for t in trees):
        raise NotCompilable("XGBoost categorical splits")

    def depth(t: dict[str, Any]) -> int:
        left, right = t["left_children"], t["right_children"]
        deepest, stack = 0, [(0, 0)]
        while stack:
            node, d = stack.pop()
            deepest = max(deepest, d)
            if left[node] >= 0:
                stack += [(left[node], d + 1), (right[node], d + 1)]
        return deepest

    def f32(values: list[float]) -> np.ndarray:
        return np.asarray(values, dtype=np.float32).astype(np.float64)

    arrays = _TreeArrays(
        feature=[np.asarray(t["split_indices"]) for t in trees],
        threshold=[f32(t["split_conditions"]) for t in trees],
        left=[np.asarray(t["left_children"]) for t in trees],
        right=[np.asarray(t["right_children"]) for t in trees],
        nan_left=[np.asarray(t["default_left"], bool) for t in trees],
        value=[f32(t["split_conditions"]) for t in trees],  # a leaf's "split condition" is its value
        depth=max(depth(t) for t in trees),
        strict=True,
    )
    return arrays, objective


def _float32_base(booster: Any, trees: _TreeArrays, probe: Matrix) -> np.float32 | None:
    """XGBoost adds the trees' leaf values one by one to ``base_score`` in float32. For a
    regressor in dollars (hundreds of trees, values ~1e4) rounding that sum in float64 instead
    drifts by cents, so the walk repeats the float32 order when it reproduces the library exactly
    on ``probe``; None (float64 sum) otherwise."""
    import json

    text = json.loads(booster.save_raw("json"))["learner"]["learner_model_param"].get("base_score", "")
    try:
        value = json.loads(text) if text.startswith("[") else [float(text)]
        base32 = np.float32(value[0]) if len(value) == 1 else None
    except (ValueError, TypeError):
        return None
    if base32 is None:
        return None
    leaves = np.hstack([np.full((1, 1), base32, np.float32), trees.leaf_values(probe).astype(np.float32)])
    margin = booster.inplace_predict(probe, predict_type="margin", validate_features=False)
    return base32 if np.cumsum(leaves, axis=1, dtype=np.float32)[0, -1] == np.float32(margin[0]) else None


def _xgb_fn(model: Any) -> Callable[[Matrix], np.ndarray]:
    """P(class 1) (binary:logistic) or the prediction (reg:squarederror) of an XGBoost model:
    the compiled tree walk for small requests, ``inplace_predict`` for larger ones."""
    booster = model.get_booster()
    # Trained with one thread (n_jobs=1, CV runs in parallel elsewhere); large requests and
    # batch files go faster on every core. Small requests never reach the library.
    booster.set_param({"nthread": 0})

    def library(m: Matrix) -> np.ndarray:
        return np.asarray(booster.inplace_predict(m, validate_features=False), dtype=np.float64)

    if getattr(model, "best_iteration", None) is not None and hasattr(model, "best_score"):
        return library  # early-stopped: inplace_predict limits the trees; keep one source of truth
    trees, objective = _xgb_trees(booster)
    if objective not in ("binary:logistic", "reg:squarederror"):
        return library

    @functools.cache
    def bases() -> tuple[float, np.float32 | None]:
        """The base margin, read back from the library itself (its JSON keeps base_score
        rounded); on first use, so a process that only scores large batches never compiles the
        walk."""
        probe = np.zeros((1, int(booster.num_features())))
        margin = float(booster.inplace_predict(probe, predict_type="margin", validate_features=False)[0])
        base32 = _float32_base(booster, trees, probe) if objective == "reg:squarederror" else None
        return margin - float(trees.leaf_values(probe).sum()), base32

    def walk(m: Matrix) -> np.ndarray:
        base, base32 = bases()
        if base32 is not None:  # the library's own arithmetic: float32, tree by tree, in order
            start = np.full((m.shape[0], 1), base32, dtype=np.float32)
            leaves = np.hstack([start, trees.leaf_values(m).astype(np.float32)])
            return np.cumsum(leaves, axis=1, dtype=np.float32)[:, -1].astype(np.float64)
        z = trees.leaf_values(m).sum(axis=1) + base
        if objective == "binary:logistic":
            return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)
        return np.asarray(z, dtype=np.float64)

    def predict(m: Matrix) -> np.ndarray:
        return walk(m) if m.shape[0] <= XGB_WALK_MAX_ROWS else library(m)

    return predict


def compile_proba(est: Any) -> Callable[[Matrix], np.ndarray]:
    """Final classifier → function(matrix) → P(class 1)."""
    from xgboost import XGBClassifier

    if isinstance(est, XGBClassifier):
        if est.n_classes_ != 2:
            raise NotCompilable("multiclass XGBoost")
        return _xgb_fn(est)
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
    if isinstance(est, RandomForestClassifier | ExtraTreesClassifier) and len(est.classes_) == 2:
        return _compile_forest_proba(est)
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
        return _xgb_fn(est)
    if isinstance(est, VotingRegressor):
        if any(isinstance(e, str) for _, e in est.estimators):
            raise NotCompilable("VotingRegressor with a dropped member")
        parts = [compile_regressor(e) for e in est.estimators_]
        w = None if est.weights is None else np.asarray(est.weights, dtype=np.float64)

        def average(m: Matrix) -> np.ndarray:  # exactly VotingRegressor.predict's arithmetic
            return np.asarray(np.average(np.column_stack([f(m) for f in parts]), axis=1, weights=w))

        return average
    if isinstance(est, RandomForestRegressor | ExtraTreesRegressor):
        return _compile_forest_regressor(est)
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
