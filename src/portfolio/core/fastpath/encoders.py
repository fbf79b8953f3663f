"""A fitted ColumnTransformer (imputers, scalers, one-hot encoders) as numpy array operations on
columns, with the fitted parameters read once at compile time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from portfolio.core.fastpath.columns import (
    SMALL_BATCH_ROWS,
    Columns,
    Matrix,
    NotCompilable,
    OneRecord,
    same_values,
)

# --------------------------------------------------------------------------- column transformer
# Values remembered per text column for one-row requests (``_ColumnBlock._one_text_row``).
_MEMO_VALUES = 1024
_NAN = float("nan")


def _isna_objects(m: Matrix) -> np.ndarray:
    """``pd.isna`` of an object matrix; for a request's few values a loop that calls it only on
    what is neither text nor None (one record: ~1.5 against ~4.7 µs)."""
    if m.size > 64:
        return np.asarray(pd.isna(m))
    flags = [v is None or (type(v) is not str and bool(pd.isna(v))) for v in m.ravel().tolist()]
    return np.array(flags, dtype=bool).reshape(m.shape)


def _impute_onehot(
    impute: Callable[[Matrix], Matrix],
    onehot: Callable[[Matrix], Matrix],
    lookups: list[dict[Any, int]],
    filled: np.ndarray,
    total: int,
) -> Callable[[Matrix], Matrix]:
    """An object SimpleImputer followed by a OneHotEncoder, fused for batches: one dict lookup
    per value (value → output column), and a missing-value test only for the values the lookup
    does not know, instead of ``pd.isna`` over the whole block and a pandas index per column
    (the 15 text columns of a 1,000-record TelecomAI batch: 2.0 vs 5.6 ms). Requests stay on
    the two steps' own per-value paths."""
    fill_codes = [lookup.get(value, -1) for lookup, value in zip(lookups, filled.tolist(), strict=True)]

    def impute_onehot(m: Matrix) -> Matrix:
        n = m.shape[0]
        if n <= SMALL_BATCH_ROWS:
            return onehot(impute(m))
        codes = np.empty((len(lookups), n), dtype=np.intp)  # output column per value
        for j, lookup in enumerate(lookups):
            codes[j] = np.fromiter(map(lookup.get, m[:, j].tolist(), itertools.repeat(-2, n)), np.intp, n)
        for j, i in zip(*np.nonzero(codes == -2), strict=True):
            # Missing: the imputed value's column. Unknown: none (handle_unknown="ignore").
            codes[j, i] = fill_codes[j] if pd.isna(m[i, j]) else -1
        flat = (codes + np.arange(n) * total).ravel()  # positions in the flattened output
        out = np.zeros(n * total, dtype=np.float64)
        out[flat[codes.ravel() >= 0]] = 1.0
        return out.reshape(n, total)

    return impute_onehot


class _ColumnBlock:
    """One ColumnTransformer branch: a chain of imputer/scaler/one-hot over some columns.

    Every step it accepts works column by column, so each output column comes from exactly one
    input column (``owner``); ``encode_column`` uses that to encode new values of one input
    column alone (the reference substitutions of explanations change one column at a time)."""

    def __init__(self, steps: list[Any], columns: list[str]):
        self.columns = columns
        ops: list[Callable[[Matrix], Matrix]] = []
        # The same steps on one row of numbers as Python floats (``_one_number_row``); None once
        # a step has no such form.
        row_ops: list[Callable[[list[float]], list[float]]] | None = []
        categorical = False
        filled: Any = None  # statistics of an object imputer just before a one-hot encoder
        owner = list(range(len(columns)))  # input column of each current matrix column
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
                    missing = _isna_objects(m) if is_obj else np.isnan(m)
                    # Nothing missing (most requests): the values as they are, no copy (~15 µs a request).
                    out = np.where(missing, stats[None, :], m) if missing.any() else m
                    if indicator is not None:
                        out = np.concatenate((out, missing[:, indicator].astype(np.float64)), axis=1)
                    return out

                ops.append(impute)
                if row_ops is not None and not is_obj:

                    def impute_row(
                        r: list[float], stats: list[float] = stats.tolist(), indicator: Any = indicator
                    ) -> list[float]:
                        out = [s if x != x else x for x, s in zip(r, stats, strict=True)]  # NaN != NaN
                        if indicator is not None:
                            out += [1.0 if r[int(f)] != r[int(f)] else 0.0 for f in indicator]
                        return out

                    row_ops.append(impute_row)
                if indicator is not None:
                    owner = [*owner, *(owner[int(f)] for f in indicator)]
                filled = stats if is_obj and indicator is None else None
                continue
            elif isinstance(step, StandardScaler):
                mean = step.mean_ if step.with_mean else 0.0
                scale = step.scale_ if step.with_std else 1.0

                def standardize(m: Matrix, mean: Any = mean, scale: Any = scale) -> Matrix:
                    return (m.astype(np.float64) - mean) / scale

                ops.append(standardize)
                if row_ops is not None:
                    n_in = len(owner)
                    means = np.broadcast_to(np.asarray(mean, dtype=np.float64), (n_in,)).tolist()
                    scales = np.broadcast_to(np.asarray(scale, dtype=np.float64), (n_in,)).tolist()

                    def standardize_row(
                        r: list[float], means: list[float] = means, scales: list[float] = scales
                    ) -> list[float]:
                        # Python's float arithmetic is numpy's float64 (IEEE 754): the same bits.
                        return [(x - m) / d for x, m, d in zip(r, means, scales, strict=True)]

                    row_ops.append(standardize_row)
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
                indexes = [
                    pd.Index(np.asarray(cats, dtype=object), dtype=object) for cats in step.categories_
                ]

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

                if filled is not None:
                    ops.append(_impute_onehot(ops.pop(), onehot, lookups, filled, sum(widths)))
                else:
                    ops.append(onehot)
                owner = [o for o, w in zip(owner, widths, strict=True) for _ in range(w)]
                categorical = True
                row_ops = None
            else:
                raise NotCompilable(f"column step {type(step).__name__}")
            filled = None
        self.ops = ops
        self.categorical = categorical
        self._row_ops = row_ops if not categorical else None
        self.width = len(owner)
        # Output columns of each input column, in output order.
        self.outputs = [[c for c, o in enumerate(owner) if o == j] for j in range(len(columns))]
        # One row of a block with text columns (a request): each column's outputs remembered per
        # value (``_one_text_row``); the output positions of all columns' outputs, in column order.
        self._memo: list[dict[str | None, list[float]]] = [{} for _ in columns]
        self._order = np.array([c for out in self.outputs for c in out], dtype=np.intp)
        # Position in the memo's concatenation (column by column) of each output column.
        self._unorder = np.argsort(self._order).tolist()

    @property
    def one_row_in_python(self) -> bool:
        """Whether ``one_row`` takes no numpy step: text (remembered encodings) or numbers whose
        steps all have a Python form (imputer, scaler)."""
        return self.categorical or self._row_ops is not None

    def one_row(self, cols: Mapping[str, Any], first: Mapping[str, Any]) -> list[float]:
        """The encoding of a one-row ``cols``, in output order, as Python floats: what ``self(cols)``
        gives, without numpy's per-call cost on a request's few values (issue 33). ``first``:
        each column's value (``OneRecord.first``, or row 0 of ``cols``)."""
        if self.categorical:
            return self._one_text_values(cols, first)
        if self._row_ops is None:
            return self._columns(cols, 1)[0].tolist()
        row = [_NAN if (v := first[c]) is None else float(v) for c in self.columns]  # as np.array does
        for op in self._row_ops:
            row = op(row)
        return row

    def _run(self, m: Matrix) -> Matrix:
        for op in self.ops:
            m = op(m)
        return np.asarray(m, dtype=np.float64)

    def __call__(self, cols: Mapping[str, Any]) -> Matrix:
        n = len(cols[self.columns[0]])
        if n == 1 and self.categorical:
            return self._one_text_row(cols)
        return self._columns(cols, n)

    def _columns(self, cols: Mapping[str, Any], n: int) -> Matrix:
        # Filled column by column: one copy at any size (np.column_stack costs ~0.5 µs per
        # column on a request; building rows then transposing copies a 100k-row chunk twice).
        dtype = object if self.categorical else np.float64
        if n == 1:  # a request: one call (a column at a time cost ~1 µs per column)
            return self._run(np.array([[cols[c][0] for c in self.columns]], dtype=dtype))
        m = np.empty((n, len(self.columns)), dtype=dtype)
        for j, c in enumerate(self.columns):
            m[:, j] = cols[c]
        return self._run(m)

    def _one_text_row(self, cols: Mapping[str, Any]) -> Matrix:
        """One row: when each column's value (text or missing) was seen before, its outputs as
        then; else the steps, whose outputs each column then remembers for its value. The same
        numbers (every step works column by column), without the object-array steps, which were a
        third of a BankChurn request's model time (issue 33). At most ``_MEMO_VALUES`` values a
        column: unknown values are not all remembered (a client could send endless new ones)."""
        hits = self._remembered({c: cols[c][0] for c in self.columns})
        if hits is not None:
            out = np.empty((1, self.width), dtype=np.float64)
            out[0, self._order] = hits
            return out
        return self._remember(cols)

    def _one_text_values(self, cols: Mapping[str, Any], first: Mapping[str, Any]) -> list[float]:
        """``_one_text_row`` as a list in output order (``one_row``)."""
        hits = self._remembered(first)
        if hits is None:
            return self._remember(cols)[0].tolist()
        return [hits[i] for i in self._unorder]

    def _remembered(self, first: Mapping[str, Any]) -> list[float] | None:
        """Each column's remembered outputs for its value (``first``: each column's value), one
        column after the other, or None when a value was not seen before."""
        out: list[float] = []
        for memo, c in zip(self._memo, self.columns, strict=True):
            v = first[c]
            hit = memo.get(v) if v is None or type(v) is str else None  # others: never remembered
            if hit is None:
                return None
            out += hit
        return out

    def _remember(self, cols: Mapping[str, Any]) -> Matrix:
        result = self._columns(cols, 1)
        for memo, c, outputs in zip(self._memo, self.columns, self.outputs, strict=True):
            v = cols[c][0]
            if (v is None or type(v) is str) and len(memo) < _MEMO_VALUES:
                memo[v] = result[0, outputs].tolist()
        return result

    def encode_column(self, j: int, values: np.ndarray, filler: Columns) -> Matrix:
        """The output columns of input column ``j`` (``outputs[j]``) for ``values``; the other
        input columns hold row 0 of ``filler`` (any valid value: the steps work per column)."""
        m = np.empty((len(values), len(self.columns)), dtype=object if self.categorical else np.float64)
        for k, c in enumerate(self.columns):
            m[:, k] = values if k == j else filler[c][0]
        return self._run(m)[:, self.outputs[j]]


class CompiledColumnTransformer:
    """A fitted ColumnTransformer as numpy code: its blocks' outputs side by side."""

    def __init__(self, ct: ColumnTransformer):
        if ct.sparse_output_:
            raise NotCompilable("sparse ColumnTransformer output")
        self.blocks: list[_ColumnBlock] = []
        # input column → every (block, position in the block, output columns) it feeds
        self.inputs: dict[str, list[tuple[_ColumnBlock, int, np.ndarray]]] = {}
        offset = 0
        for _, trans, cols in ct.transformers_:
            if trans == "drop":
                continue
            columns = [str(c) for c in cols]
            if not columns:
                continue
            if isinstance(cols[0], int | np.integer):
                raise NotCompilable("positional ColumnTransformer columns")
            steps = [s for _, s in trans.steps] if isinstance(trans, Pipeline) else [trans]
            block = _ColumnBlock(steps, columns)
            for j, c in enumerate(columns):
                self.inputs.setdefault(c, []).append((block, j, offset + np.asarray(block.outputs[j])))
            self.blocks.append(block)
            offset += block.width
        self._one_row_in_python = bool(self.blocks) and all(b.one_row_in_python for b in self.blocks)

    def __call__(self, cols: Mapping[str, Any]) -> Matrix:
        if self._one_row_in_python:
            # A request's row: one array from the blocks' Python floats (~10 numpy calls fewer).
            if type(cols) is OneRecord:
                first: Mapping[str, Any] = cols.first
            elif len(cols[self.blocks[0].columns[0]]) == 1:
                first = {c: cols[c][0] for c in self.inputs}
            else:
                first = {}
            if first:
                return np.array([[x for b in self.blocks for x in b.one_row(cols, first)]], dtype=np.float64)
        return np.concatenate([b(cols) for b in self.blocks], axis=1)

    def patch(
        self,
        matrix: Matrix,
        cols: Columns,
        before: Columns,
        changed: Mapping[str, np.ndarray] | None = None,
    ) -> Matrix:
        """``matrix`` (the encoding of rows ``before``) made the encoding of rows ``cols``:
        only the input values that differ are encoded, each distinct value once (a reference
        substitution changes one or two input columns of a row). ``changed``: the rows where
        a column differs, when the caller knows them (else the values are compared)."""
        for name in self.inputs:
            known = None if changed is None else changed.get(name)
            rows = np.flatnonzero(~same_values(cols[name], before[name])) if known is None else known
            if len(rows):
                self.encode_into(matrix, rows, name, cols[name][rows], before)
        return matrix

    def encode_into(
        self, matrix: Matrix, rows: np.ndarray, name: str, values: np.ndarray, filler: Columns
    ) -> None:
        """Write the encoding of ``values`` of input column ``name`` into ``matrix[rows]`` (that
        column's outputs only), each distinct value encoded once; ``filler``: any valid rows of
        the other input columns (see ``_ColumnBlock.encode_column``)."""
        codes, uniques = pd.factorize(values)
        # Each missing value is encoded as itself (factorize gives them all code -1).
        missing = np.flatnonzero(codes < 0)
        distinct = np.concatenate([np.asarray(uniques, dtype=values.dtype), values[missing]])
        codes[missing] = len(uniques) + np.arange(len(missing))
        for block, j, outputs in self.inputs.get(name, ()):
            matrix[rows[:, None], outputs[None, :]] = block.encode_column(j, distinct, filler)[codes]


def compile_column_transformer(ct: ColumnTransformer) -> CompiledColumnTransformer:
    return CompiledColumnTransformer(ct)
