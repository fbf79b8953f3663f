"""CarVision feature engineering: scikit-learn transformers that travel inside the logged model, so
training, ``/predict``, batch scoring and the dashboard share one code path.

Each transformer works on *columns* (a dict of numpy arrays): ``transform_columns`` is the one
implementation, used directly by the core's compiled fast path (``core/fastpath/``), and
``transform`` is a thin DataFrame wrapper around it. The two paths therefore cannot disagree.

Pipeline (see ``spec.py``):

``VehicleFeatures``  raw fields → vehicle age at posting, make, miles per year, condition score,
                     posting day, cleaned categoricals (rules: ``cleaning.py``)
``PriceStats``       cross-fitted target statistics: mean log-price of the training listings that
                     share a key (same model and year; same model, year and odometer; the exact
                     same listing…), plus how many there were
``CategoryCodes``    categoricals → integer codes (unknown or missing → NaN) for the tree models
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import KFold

from portfolio.carvision.cleaning import MISSING_CATEGORY

Columns = dict[str, np.ndarray]

CONDITION_SCORE: dict[str, float] = {
    "salvage": 0.0,
    "fair": 1.0,
    "good": 2.0,
    "excellent": 3.0,
    "like new": 4.0,
    "new": 5.0,
}
CATEGORICAL = ("fuel", "transmission", "type", "paint_color", "make", "model")
NUMERIC = (
    "model_year",
    "vehicle_age",
    "odometer",
    "miles_per_year",
    "condition_score",
    "cylinders",
    "is_4wd",
    "days_listed",
    "posted_day",
)
DERIVED = (*NUMERIC, *CATEGORICAL)
_DAY_NS = 86_400 * 10**9
_DAYS_PER_YEAR = 365.2425
# Age below this is treated as this (a car posted in its model year still has some use on it).
MIN_AGE_YEARS = 0.5
# Up to this many rows, values are normalised one by one and keys hashed and mixed in plain
# Python: a handful of numpy calls per column cost more than the arithmetic itself (a one-listing
# API request has 7 keys of ~10 columns).
SMALL_ROWS = 8

# PriceStats keys: name → columns (of VehicleFeatures' output) that must match.
# The fields a seller may fill in or correct between re-posts come last, so that the relaxed keys
# below share their first columns (group_keys computes a shared prefix once).
LISTING_KEY = (
    "model",
    "condition_score",
    "fuel",
    "odometer",
    "transmission",
    "type",
    "is_4wd",
    "model_year",
    "cylinders",
    "paint_color",
)


def _listing_key_without(*names: str) -> tuple[str, ...]:
    return tuple(c for c in LISTING_KEY if c not in names)


PRICE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("same_listing", LISTING_KEY),
    # Re-posts whose paint colour was filled in (or changed) between posts: ~5% more hold-out
    # listings find their earlier post this way (CV RMSE -11, see params.yaml).
    ("same_listing_any_color", _listing_key_without("paint_color")),
    ("same_odometer", ("model", "model_year", "odometer")),
    ("same_odometer_color", ("model", "model_year", "odometer", "paint_color")),
    ("model_year", ("model", "model_year")),
    ("model_year_condition", ("model", "model_year", "condition_score")),
    ("model", ("model",)),
    # Re-posts whose seller filled in or corrected the model year, the cylinders or the 4WD flag
    # between posts (each a value of its own when missing): 5-fold CV RMSE -$64 ± 20 over 15
    # folds (3 fold seeds, every fold better), hold-out -$55 [-83, -28]; see params.yaml.
    ("same_listing_any_cyl", _listing_key_without("cylinders")),
    ("same_listing_any_cyl_color", _listing_key_without("cylinders", "paint_color")),
    ("same_listing_any_year", _listing_key_without("model_year")),
    ("same_listing_any_year_cyl", _listing_key_without("model_year", "cylinders")),
    ("same_listing_any_year_color", _listing_key_without("model_year", "paint_color")),
    ("same_listing_any_year_cyl_color", _listing_key_without("model_year", "cylinders", "paint_color")),
    (
        "same_listing_any_year_cyl_color_4wd",
        _listing_key_without("model_year", "cylinders", "paint_color", "is_4wd"),
    ),
)


# ----------------------------------------------------------------------------------- helpers
def frame_to_columns(X: pd.DataFrame) -> Columns:
    """A typed frame → columns as the fast path passes them (float64+NaN, datetime64, object)."""
    cols: Columns = {}
    for name in X.columns:
        s = X[name]
        if pd.api.types.is_datetime64_any_dtype(s):
            cols[str(name)] = s.to_numpy(dtype="datetime64[ns]")
        elif pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            cols[str(name)] = s.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            cols[str(name)] = s.to_numpy(dtype=object)
    return cols


def columns_to_frame(cols: Columns, index: Any = None) -> pd.DataFrame:
    return pd.DataFrame(cols, index=index)


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and v != v)


def _normalise(v: Any, missing: str) -> str:
    return missing if _missing(v) else " ".join(str(v).lower().split()) or missing


def _text(values: np.ndarray, missing: str = MISSING_CATEGORY) -> np.ndarray:
    """Object values → normalised text (lower-case, single spaces), ``missing`` for gaps."""
    if len(values) <= SMALL_ROWS:
        return np.array([_normalise(v, missing) for v in values], dtype=object)
    # Batches repeat a few hundred distinct values: normalise each distinct value once
    # (factorize puts every missing value under code -1, which picks the appended ``missing``).
    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    table = np.array([*(_normalise(u, missing) for u in uniques), missing], dtype=object)
    return table[codes]


def _per_distinct(text: np.ndarray, fn: Callable[[str], Any], dtype: Any) -> np.ndarray:
    """``fn`` of each value of normalised ``text`` (no missing values), computed once per
    distinct value for batches (a batch of listings repeats a few hundred models)."""
    if len(text) > SMALL_ROWS:
        codes, uniques = pd.factorize(text)
        if not (codes < 0).any():
            return np.array([fn(u) for u in uniques], dtype=dtype)[codes]
    return np.array([fn(t) for t in text], dtype=dtype)


def _float(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([np.nan if _missing(v) else float(v) for v in values], dtype=np.float64)
    return values.astype(np.float64, copy=False)


def _days(values: np.ndarray) -> np.ndarray:
    """datetime64 (or date strings already parsed) → days since 1970-01-01 as float, NaN for NaT."""
    d = np.asarray(values)
    if d.dtype == object:
        d = pd.to_datetime(pd.Series(d), errors="coerce").to_numpy(dtype="datetime64[ns]")
    d = d.astype("datetime64[ns]")
    out = d.astype(np.int64).astype(np.float64) / _DAY_NS
    out[np.isnat(d)] = np.nan
    return out


_U64 = np.uint64
_M64 = (1 << 64) - 1
_NAN_BITS = _U64(0x7FF8DEADBEEF0001)  # one fixed bit pattern for every missing number
_GROUP_SALT = _U64(0x9E3779B97F4A7C15)  # a group's number times this is added to its keys
_F64, _F64_BITS = struct.Struct("<d"), struct.Struct("<Q")  # a float's bits, as numpy's view gives them


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the bits of each 64-bit value (wrapping arithmetic)."""
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


@functools.lru_cache(maxsize=8192)  # requests repeat the same makes, models and colours
def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _key_part_small(values: np.ndarray) -> list[int]:
    """``_key_part`` for a few values, as Python ints (no numpy call per value)."""
    if values.dtype == object:
        return [_stable_hash("∅" if _missing(v) else str(v)) for v in values]
    nan_bits = int(_NAN_BITS)
    return [nan_bits if v != v else _F64_BITS.unpack(_F64.pack(v))[0] for v in values.tolist()]


def _key_part(values: np.ndarray) -> np.ndarray:
    """One uint64 per value, identical in every process: numbers by their float64 bits (missing
    → one fixed pattern), text by an unkeyed BLAKE2b of the string (missing → "∅")."""
    if values.dtype == object:
        # Each distinct value hashed once (factorize: code -1 for every missing value, which
        # picks the appended "∅"); 2-3x faster on a batch than sorting the values as text.
        codes, uniques = pd.factorize(np.asarray(values, dtype=object))
        texts = [*(str(u) for u in uniques), "∅"]
        hashes = np.fromiter((_stable_hash(t) for t in texts), dtype=_U64, count=len(texts))
        return hashes[codes]
    v = np.ascontiguousarray(values, dtype=np.float64)
    bits = v.view(_U64).copy()
    bits[np.isnan(v)] = _NAN_BITS
    return bits


def _mix_int(z: int) -> int:
    """``_mix`` for one value as a Python int (same splitmix64 arithmetic, modulo 2**64)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def group_keys(cols: Columns, names: Sequence[str], parts: dict[str, Any] | None = None) -> np.ndarray:
    """One 64-bit key per row from the given columns (a missing value is a value of its own).
    ``parts`` caches the per-column hashes when several keys share columns."""
    parts = {} if parts is None else parts
    return KeyPlan([names]).keys(cols, parts)[0]


class KeyPlan:
    """The keys of several column groups, computed together: a key folds its columns in order
    (``state = mix(state ^ mix(column hash + position))``), so groups that start with the same
    columns share those steps; the groups' prefixes form a tree whose nodes are computed once
    each (the 14 price groups: 18 steps instead of 87)."""

    def __init__(self, groups: Sequence[Sequence[str]]):
        self.nodes: list[tuple[int, str, int]] = []  # (parent node or -1, column, position)
        index: dict[tuple[str, ...], int] = {}
        self.ends: list[int] = []  # each group's last node
        for names in groups:
            parent = -1
            for i, name in enumerate(names):
                prefix = tuple(names[: i + 1])
                if prefix not in index:
                    index[prefix] = len(self.nodes)
                    self.nodes.append((parent, name, i))
                parent = index[prefix]
            self.ends.append(parent)

    def keys(self, cols: Columns, parts: dict[str, Any] | None = None) -> list[np.ndarray]:
        """Each group's keys (uint64 per row); ``parts`` caches the per-column hashes."""
        parts = {} if parts is None else parts
        n = len(next(iter(cols.values())))
        if n <= SMALL_ROWS:
            start = [0x243F6A8885A308D3] * n
            small: list[list[int]] = []
            for parent, name, i in self.nodes:
                if name not in parts:
                    parts[name] = _key_part_small(cols[name])
                column = parts[name]
                before = start if parent < 0 else small[parent]
                small.append([_mix_int(k ^ _mix_int((column[r] + i) & _M64)) for r, k in enumerate(before)])
            return [np.asarray(small[e], dtype=_U64) for e in self.ends]
        init = np.full(n, _U64(0x243F6A8885A308D3), dtype=_U64)
        states: list[np.ndarray] = []
        with np.errstate(over="ignore"):
            for parent, name, i in self.nodes:
                if name not in parts:
                    parts[name] = _key_part(cols[name])
                states.append(_mix((init if parent < 0 else states[parent]) ^ _mix(parts[name] + _U64(i))))
        return [states[e] for e in self.ends]


def _lookup(sorted_keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``query`` in ``sorted_keys`` and whether each was found."""
    if len(sorted_keys) == 0:
        return np.zeros(len(query), dtype=np.int64), np.zeros(len(query), dtype=bool)
    # The queries in order: each search starts where the last ended and the table is read
    # front to back (a batch's 14 groups: ~0.85-1.2 vs 1.2-1.5 ms).
    order = np.argsort(query)
    pos = np.empty(len(query), dtype=np.int64)
    pos[order] = np.searchsorted(sorted_keys, query[order])
    pos = np.minimum(pos, len(sorted_keys) - 1)
    return pos, sorted_keys[pos] == query


class _ColumnTransformer(TransformerMixin, BaseEstimator):
    """Base: ``transform`` = DataFrame wrapper around ``transform_columns``."""

    def transform_columns(self, cols: Columns) -> Columns:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return columns_to_frame(self.transform_columns(frame_to_columns(X)), index=X.index)


# ---------------------------------------------------------------------------- VehicleFeatures
class VehicleFeatures(_ColumnTransformer):
    """Raw CarVision fields → model features (the derived features of the issue and the cleaning
    rules of ``cleaning.PIPELINE_RULES``). Learns two values at fit time: the median posting date
    and the median days listed, used when a request omits them."""

    def fit(self, X: pd.DataFrame, y: Any = None) -> VehicleFeatures:
        cols = frame_to_columns(X)
        days = _days(cols["date_posted"])
        listed = _float(cols["days_listed"])
        self.reference_day_ = float(np.nanmedian(days)) if np.isfinite(days).any() else 17_700.0
        self.days_listed_fill_ = float(np.nanmedian(listed)) if np.isfinite(listed).any() else 30.0
        return self

    def transform_columns(self, cols: Columns) -> Columns:
        posted = _days(cols["date_posted"])
        posted = np.where(np.isnan(posted), self.reference_day_, posted)
        posted_year = 1970.0 + posted / _DAYS_PER_YEAR
        model_year = _float(cols["model_year"])
        age = np.clip(posted_year - model_year, 0.0, None)
        odometer = _float(cols["odometer"])
        cond = _text(cols["condition"])
        model = _text(cols["model"])
        listed = _float(cols["days_listed"])
        is_4wd = _float(cols["is_4wd"])
        return {
            "model_year": model_year,
            "vehicle_age": age,
            "odometer": odometer,
            "miles_per_year": odometer / np.maximum(age, MIN_AGE_YEARS),
            "condition_score": _per_distinct(cond, lambda c: CONDITION_SCORE.get(c, np.nan), np.float64),
            "cylinders": _float(cols["cylinders"]),
            "is_4wd": np.where(np.isnan(is_4wd), 0.0, is_4wd),
            "days_listed": np.where(np.isnan(listed), self.days_listed_fill_, listed),
            "posted_day": posted - self.reference_day_,
            "fuel": _text(cols["fuel"]),
            "transmission": _text(cols["transmission"]),
            "type": _text(cols["type"]),
            "paint_color": _text(cols["paint_color"]),
            "make": _per_distinct(model, lambda m: m.split(" ", 1)[0], object),
            "model": model,
        }


# --------------------------------------------------------------------------------- PriceStats
class PriceStats(_ColumnTransformer):
    """Adds, per key group, the mean log-price of training listings with the same key and their
    count (NaN / 0 when none). Used listings are re-posted often (about one hold-out listing in
    five has an identical twin in the training data, more once a field the seller edited between
    posts is left out of the key), so "what did the same car ask before" and
    "what do cars of this model and year ask" are strong, honest features.

    Leakage guard: ``fit_transform`` (what a Pipeline calls while training) gives every training
    row statistics computed on the *other* folds only (cross-fitting, as scikit-learn's
    ``TargetEncoder`` does); ``transform`` (prediction) uses all training rows."""

    def __init__(
        self,
        groups: tuple[tuple[str, tuple[str, ...]], ...] = PRICE_GROUPS,
        folds: int = 5,
        random_state: int = 0,
    ):
        self.groups = groups
        self.folds = folds
        self.random_state = random_state

    @staticmethod
    def _table(keys: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        uniq, inverse = np.unique(keys, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
        sums = np.bincount(inverse, weights=target, minlength=len(uniq))
        return uniq, sums / np.maximum(counts, 1.0), counts

    @staticmethod
    def _apply(
        table: tuple[np.ndarray, np.ndarray, np.ndarray], keys: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        uniq, means, counts = table
        pos, hit = _lookup(uniq, keys)
        mean = np.where(hit, means[pos] if len(means) else np.nan, np.nan)
        count = np.where(hit, counts[pos] if len(counts) else 0.0, 0.0)
        return mean.astype(np.float64), count.astype(np.float64)

    def _target(self, y: Any) -> np.ndarray:
        return np.log(np.maximum(np.asarray(y, dtype=np.float64), 1.0))

    def fit(self, X: pd.DataFrame, y: Any) -> PriceStats:
        self._fit_tables(frame_to_columns(X), self._target(y))
        return self

    def _fit_tables(self, cols: Columns, target: np.ndarray) -> None:
        self.keys_: dict[str, np.ndarray] = {}
        self.means_: dict[str, np.ndarray] = {}
        self.counts_: dict[str, np.ndarray] = {}
        parts: dict[str, np.ndarray] = {}
        for name, key_cols in self.groups:
            uniq, means, counts = self._table(group_keys(cols, key_cols, parts), target)
            self.keys_[name], self.means_[name], self.counts_[name] = uniq, means, counts

    def fit_transform(self, X: pd.DataFrame, y: Any = None, **fit_params: Any) -> pd.DataFrame:
        if y is None:
            raise ValueError("PriceStats needs the target (price) to fit")
        cols = frame_to_columns(X)
        target = self._target(y)
        self._fit_tables(cols, target)
        out = dict(cols)
        n = len(target)
        splitter = KFold(min(self.folds, n), shuffle=True, random_state=self.random_state)
        parts: dict[str, np.ndarray] = {}
        for name, key_cols in self.groups:
            keys = group_keys(cols, key_cols, parts)
            mean, count = np.full(n, np.nan), np.zeros(n)
            for tr, va in splitter.split(keys):
                table = self._table(keys[tr], target[tr])
                mean[va], count[va] = self._apply(table, keys[va])
            out[f"{name}_logprice"], out[f"{name}_n"] = mean, count
        return columns_to_frame(out, index=X.index)

    def __getstate__(self) -> dict[str, Any]:
        # The lookup caches are rebuilt on first use: never saved with the model.
        state = dict(super().__getstate__())
        state.pop("_plan_cache", None)
        state.pop("_combined_cache", None)
        return state

    def _plan(self) -> KeyPlan:
        cache: dict[str, Any] = self.__dict__.setdefault("_plan_cache", {})  # built on first use
        if "plan" not in cache:
            cache["plan"] = KeyPlan([key_cols for _, key_cols in self.groups])
        plan: KeyPlan = cache["plan"]
        return plan

    def transform_columns(self, cols: Columns) -> Columns:
        out = dict(cols)
        keys = self._plan().keys(cols)
        if len(next(iter(cols.values()))) <= SMALL_ROWS:
            return out | self._transform_small(keys)
        for (name, _), k in zip(self.groups, keys, strict=True):
            table = (self.keys_[name], self.means_[name], self.counts_[name])
            out[f"{name}_logprice"], out[f"{name}_n"] = self._apply(table, k)
        return out

    def _combined(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Every group's table in one sorted array, each key mixed with its group's number, so
        that a request looks up all its groups with one binary search (built on first use;
        None in the unlikely case that two mixed keys collide)."""
        cache: dict[str, Any] = self.__dict__.setdefault("_combined_cache", {})
        if "table" not in cache:
            with np.errstate(over="ignore"):
                keys = np.concatenate(
                    [
                        _mix(self.keys_[name] + _U64(g) * _GROUP_SALT)
                        for g, (name, _) in enumerate(self.groups)
                    ]
                )
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            means = np.concatenate([self.means_[name] for name, _ in self.groups])[order]
            counts = np.concatenate([self.counts_[name] for name, _ in self.groups])[order]
            cache["table"] = None if bool(np.any(keys[1:] == keys[:-1])) else (keys, means, counts)
        table: tuple[np.ndarray, np.ndarray, np.ndarray] | None = cache["table"]
        return table

    def _transform_small(self, keys_by_group: list[np.ndarray]) -> Columns:
        """The statistics of a few rows: every group's keys looked up in one binary search."""
        table = self._combined()
        out: Columns = {}
        if table is None:
            for (name, _), k in zip(self.groups, keys_by_group, strict=True):
                t = (self.keys_[name], self.means_[name], self.counts_[name])
                out[f"{name}_logprice"], out[f"{name}_n"] = self._apply(t, k)
            return out
        keys = [k.tolist() for k in keys_by_group]
        combined, means, counts = table
        if not len(combined):
            combined, means, counts = np.zeros(1, dtype=_U64), np.full(1, np.nan), np.zeros(1)
        query = np.asarray(
            [_mix_int((k + g * int(_GROUP_SALT)) & _M64) for g, ks in enumerate(keys) for k in ks], dtype=_U64
        )
        pos = np.minimum(combined.searchsorted(query), len(combined) - 1)
        hit = (combined[pos] == query) & np.isfinite(means[pos])
        mean = np.where(hit, means[pos], np.nan).reshape(len(keys), -1)
        count = np.where(hit, counts[pos], 0.0).reshape(len(keys), -1)
        for g, (name, _) in enumerate(self.groups):
            out[f"{name}_logprice"], out[f"{name}_n"] = mean[g], count[g]
        return out

    def output_names(self) -> list[str]:
        return [f"{name}_{s}" for name, _ in self.groups for s in ("logprice", "n")]


# ------------------------------------------------------------------------------ CategoryCodes
class CategoryCodes(_ColumnTransformer):
    """Categorical columns → integer codes in the sorted training categories (float, NaN for a
    category never seen in training); every other column passes through unchanged."""

    def __init__(self, columns: tuple[str, ...] = CATEGORICAL):
        self.columns = columns

    def fit(self, X: pd.DataFrame, y: Any = None) -> CategoryCodes:
        cols = frame_to_columns(X)
        self.categories_: dict[str, np.ndarray] = {
            c: np.unique(np.asarray([str(v) for v in cols[c]], dtype=str)) for c in self.columns
        }
        return self

    def _codes(self, column: str) -> dict[str, float]:
        """category → code, for the per-value path of small requests (built on first use)."""
        cache: dict[str, dict[str, float]] = self.__dict__.setdefault("_codes_cache", {})
        if column not in cache:
            cache[column] = {str(c): float(i) for i, c in enumerate(self.categories_[column])}
        return cache[column]

    def transform_columns(self, cols: Columns) -> Columns:
        out = dict(cols)
        for c in self.columns:
            values = np.asarray(cols[c], dtype=object)
            if len(values) <= SMALL_ROWS:
                lookup = self._codes(c)
                out[c] = np.array([lookup.get("" if _missing(v) else str(v), np.nan) for v in values])
                continue
            # Batches: look up each distinct value once (missing → code -1 → the appended "").
            codes, uniques = pd.factorize(values)
            text = np.asarray([*(str(u) for u in uniques), ""], dtype=str)
            pos, hit = _lookup(self.categories_[c], text)
            out[c] = np.where(hit, pos.astype(np.float64), np.nan)[codes]
        return out
