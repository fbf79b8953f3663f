"""Tree ensembles (scikit-learn forests, XGBoost boosters) and the linear and voting estimators
around them, compiled into a numba-compiled, branch-free tree walk over a feature matrix.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
    VotingClassifier,
    VotingRegressor,
)
from sklearn.linear_model import LogisticRegression

from portfolio.core.fastpath.columns import Matrix, NotCompilable

# ------------------------------------------------------------------------------- estimators


# Walks kept in flight by the compiled kernel: their memory reads and compares overlap instead
# of each waiting for the last. A few rows: this many trees side by side for each row. More
# rows: one tree at a time over a block of this many rows, whose nodes then stay in the L1
# cache (for 1,000 rows of 800 trees, twice as fast as a rows x trees tile of the same size).
_WALKS_IN_FLIGHT = 64
_FEW_ROWS = 8
# A node's word: 21 bits of child index (2,097,152 nodes), 11 of column (1,024 features, each
# read as two columns: missing values as -inf and as +inf).
_CHILD_SHIFT = 11
_COLUMN_MASK = 2047
# Batches of at least this many rows per thread are split across the machine's cores (the
# kernel releases the GIL).
_ROWS_PER_THREAD = 256
# Rows x trees x depth of at most this many steps are walked in numpy (``_TreeArrays._numpy_rows``),
# more by the numba kernel: a worker that answers only /predict then never loads numba and its
# compiler (~110 MB per worker, issue 33's 300 MB target). Each ensemble counts on its own: a
# BankChurn or Plan request (400 or 300 trees x 3, one row), a TelecomAI request (its row and
# 19 explanation variants: 20 x 100 x 3 boosted, 20 x 30 x 6 forest) and a CarVision one (one
# row, two boosters of 800 x 6) all stay in numpy. What it costs, measured on 2026-12-07
# in-process on the shared VM (one request with its outputs, numpy against numba, median of 8
# rounds of 200): TelecomAI 1,497 against 1,026 us, CarVision 694 against 424 us; earlier
# (2026-12-06) BankChurn 184-195 against 134 us, Plan 128 against 82 us. 0 walks every row
# with numba (the fastest, ~110 MB more per worker).
_NUMPY_WALK_STEPS = 8192  # PORTFOLIO_NUMPY_WALK_MAX_STEPS in an API worker (set_numpy_walk_steps)


def set_numpy_walk_steps(steps: int) -> None:
    """This process's bound for the numpy walk (``_NUMPY_WALK_STEPS``); an API worker sets it
    from its settings at start."""
    global _NUMPY_WALK_STEPS
    _NUMPY_WALK_STEPS = int(steps)


# A missing value as the one-row walk reads it: -inf in column 2f, +inf in column 2f + 1.
_MISSING_SIDES = np.array([[-np.inf, np.inf]], dtype=np.float32)
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_CORES, thread_name_prefix="tree-walk")


@functools.cache
def _tree_kernel() -> Callable[..., None]:
    """The tree walk, compiled to machine code by numba on first use (about a second; servers
    warm their predictor at load so no request pays it). Compiled code is cached on disk when numba
    finds a writable cache folder (next to this file, else ``NUMBA_CACHE_DIR`` or the user
    cache), so later processes load it in milliseconds."""
    import numba

    def tree_sums(
        x: np.ndarray,
        roots: np.ndarray,
        words: np.ndarray,
        thresholds: np.ndarray,
        value: np.ndarray,
        depth: int,
        init: float,
        float32: bool,
        out: np.ndarray,
    ) -> None:
        # x: float32 rows. A node is a uint32 word (left child << 11 | column) and a float32
        # threshold; the right child is left + 1. The walk reads every feature twice: column
        # 2f holds feature f with missing values as -inf, column 2f + 1 with missing as +inf,
        # and a node whose missing values go right reads column 2f + 1. So a step is
        # ``left + (x >= t)`` and missing values follow each node's default without a test. A
        # leaf's threshold is NaN (every compare false) and its left child itself, so extra
        # steps stay on it. The step is written out in both loops below: an inlined helper
        # measured a few % slower.
        n_rows, n_features, n_trees = x.shape[0], x.shape[1], roots.shape[0]
        node = np.empty(_WALKS_IN_FLIGHT, dtype=np.int32)
        acc64 = np.empty(_WALKS_IN_FLIGHT, dtype=np.float64)
        acc32 = np.empty(_WALKS_IN_FLIGHT, dtype=np.float32)
        # The rows being walked, both columns of every feature, column-major: xb[c * B + i].
        xb = np.empty(2 * n_features * _WALKS_IN_FLIGHT, dtype=np.float32)
        inf = np.float32(np.inf)
        if n_rows <= _FEW_ROWS:
            for r in range(n_rows):
                for f in range(n_features):
                    v = x[r, f]
                    xb[2 * f] = -inf if np.isnan(v) else v
                    xb[2 * f + 1] = inf if np.isnan(v) else v
                sum64, sum32 = init, np.float32(init)
                for t0 in range(0, n_trees, _WALKS_IN_FLIGHT):
                    nt = min(_WALKS_IN_FLIGHT, n_trees - t0)
                    for j in range(nt):
                        node[j] = roots[t0 + j]
                    for _ in range(depth):
                        for j in range(nt):
                            nd = node[j]
                            word = words[nd]
                            node[j] = np.int32(word >> _CHILD_SHIFT) + np.int32(
                                xb[word & _COLUMN_MASK] >= thresholds[nd]
                            )
                    for j in range(nt):  # in tree order, as the libraries add them
                        if float32:
                            sum32 += value[node[j]]
                        else:
                            sum64 += value[node[j]]
                out[r] = sum32 if float32 else sum64
            return
        for r0 in range(0, n_rows, _WALKS_IN_FLIGHT):
            nr = min(_WALKS_IN_FLIGHT, n_rows - r0)
            for i in range(nr):
                acc64[i] = init
                acc32[i] = np.float32(init)
                for f in range(n_features):
                    v = x[r0 + i, f]
                    xb[2 * f * _WALKS_IN_FLIGHT + i] = -inf if np.isnan(v) else v
                    xb[(2 * f + 1) * _WALKS_IN_FLIGHT + i] = inf if np.isnan(v) else v
            for tree in range(n_trees):
                root = roots[tree]
                for i in range(nr):
                    node[i] = root
                for _ in range(depth):
                    for i in range(nr):
                        nd = node[i]
                        word = words[nd]
                        node[i] = np.int32(word >> _CHILD_SHIFT) + np.int32(
                            xb[(word & _COLUMN_MASK) * _WALKS_IN_FLIGHT + i] >= thresholds[nd]
                        )
                for i in range(nr):
                    if float32:
                        acc32[i] += value[node[i]]
                    else:
                        acc64[i] += value[node[i]]
            for i in range(nr):
                out[r0 + i] = acc32[i] if float32 else acc64[i]

    try:
        kernel = numba.njit(nogil=True, cache=True)(tree_sums)
    except RuntimeError:  # no writable cache folder anywhere: compile in memory each process
        kernel = numba.njit(nogil=True)(tree_sums)
    return cast(Callable[..., None], kernel)


@functools.cache
def _path_kernels() -> tuple[Callable[..., None], Callable[..., None]]:
    """Two walks for explanations, whose rows come in families: a row, then copies of it with one
    input field changed (a reference substitution changes a few encoded columns). ``walk_paths``
    walks the rows and keeps, per row and tree, the leaf value and a 64-bit mask of the columns
    its path read (column f sets bit f mod 64: two columns may share a bit, which only costs an
    extra walk). ``variant_sums`` scores each copy from its row's walk: a tree whose path read
    none of the changed columns gives the copy the row's own leaf, so only the other trees are
    walked again (TelecomAI: about a fifth of them). Same node words as ``tree_sums``; missing
    values are tested at each step instead of the doubled columns (the trees read few of them)."""
    import numba

    @numba.njit(inline="always")
    def step(words: np.ndarray, thresholds: np.ndarray, nd: int, x: np.ndarray, r: int) -> Any:
        """One node down for row ``r`` of ``x``: right when x >= t, or when x is missing and
        the node sends missing values right (the word's column is 2f + 1)."""
        word = words[nd]
        column = word & _COLUMN_MASK
        v = x[r, column >> 1]
        go = np.int32(v >= thresholds[nd]) | (np.int32(column & 1) & np.int32(v != v))
        return np.int32(word >> _CHILD_SHIFT) + go

    def walk_paths(
        x: np.ndarray,
        roots: np.ndarray,
        words: np.ndarray,
        thresholds: np.ndarray,
        value: np.ndarray,
        bits: np.ndarray,
        depth: int,
        init: float,
        sums: np.ndarray,
        leaves: np.ndarray,
        masks: np.ndarray,
    ) -> None:
        n_rows, n_trees = x.shape[0], roots.shape[0]
        node = np.empty(_WALKS_IN_FLIGHT, dtype=np.int32)
        mask = np.empty(_WALKS_IN_FLIGHT, dtype=np.uint64)
        for r in range(n_rows):
            acc = init
            for t0 in range(0, n_trees, _WALKS_IN_FLIGHT):
                nt = min(_WALKS_IN_FLIGHT, n_trees - t0)
                for j in range(nt):
                    node[j] = roots[t0 + j]
                    mask[j] = 0
                for _ in range(depth):
                    for j in range(nt):
                        mask[j] |= bits[node[j]]
                        node[j] = step(words, thresholds, node[j], x, r)
                for j in range(nt):  # in tree order, as tree_sums adds them
                    leaf = value[node[j]]
                    acc += leaf
                    leaves[r, t0 + j] = leaf
                    masks[r, t0 + j] = mask[j]
            sums[r] = acc

    def variant_sums(
        xv: np.ndarray,
        xb: np.ndarray,
        base_rows: np.ndarray,
        order: np.ndarray,
        roots: np.ndarray,
        words: np.ndarray,
        thresholds: np.ndarray,
        value: np.ndarray,
        column_bits: np.ndarray,
        depth: int,
        sums: np.ndarray,
        leaves: np.ndarray,
        masks: np.ndarray,
        out: np.ndarray,
    ) -> None:
        n_trees, n_features = roots.shape[0], xv.shape[1]
        hits = np.empty(n_trees, dtype=np.int32)
        node = np.empty(_WALKS_IN_FLIGHT, dtype=np.int32)
        for k in range(order.shape[0]):  # copies ordered by their row: its walk stays in cache
            v = order[k]
            b = base_rows[v]
            changed = np.uint64(0)
            for f in range(n_features):
                a, c = xv[v, f], xb[b, f]
                if a != c and not (a != a and c != c):
                    changed |= column_bits[f]
            acc = sums[b]
            if changed != 0:
                nh = 0
                for t in range(n_trees):  # branch-free: every tree is written, kept if its path
                    hits[nh] = t  # read a changed column
                    nh += (masks[b, t] & changed) != 0
                for h0 in range(0, nh, _WALKS_IN_FLIGHT):
                    nt = min(_WALKS_IN_FLIGHT, nh - h0)
                    for j in range(nt):
                        node[j] = roots[hits[h0 + j]]
                    for _ in range(depth):
                        for j in range(nt):
                            node[j] = step(words, thresholds, node[j], xv, v)
                    for j in range(nt):
                        acc += value[node[j]] - leaves[b, hits[h0 + j]]
            out[v] = acc

    try:
        jit = numba.njit(nogil=True, cache=True)
        kernels = jit(walk_paths), jit(variant_sums)
    except RuntimeError:  # no writable cache folder anywhere
        kernels = numba.njit(nogil=True)(walk_paths), numba.njit(nogil=True)(variant_sums)
    # Compile both now, for both leaf precisions, on a one-leaf tree: a server's warm-up reaches
    # this, and its first batch must not wait for numba.
    x, roots, words = np.zeros((1, 1), np.float32), np.zeros(1, np.int32), np.zeros(1, np.uint32)
    thresholds, bits, rows = np.full(1, np.nan, np.float32), np.zeros(1, np.uint64), np.zeros(1, np.int64)
    sums, leaves, masks = np.zeros(1), np.zeros((1, 1)), np.zeros((1, 1), np.uint64)
    for value in (np.zeros(1, np.float64), np.zeros(1, np.float32)):
        kernels[0](x, roots, words, thresholds, value, bits, 1, 0.0, sums, leaves, masks)
        tree = (roots, words, thresholds, value)
        kernels[1](x + 1, x, rows, rows, *tree, bits + 1, 1, sums, leaves, masks, sums)
    return cast(tuple[Callable[..., None], Callable[..., None]], kernels)


class TreePaths:
    """What ``_TreeArrays.walk_paths`` kept of its rows' walks (see ``_path_kernels``)."""

    def __init__(self, x: np.ndarray, sums: np.ndarray, leaves: np.ndarray, masks: np.ndarray):
        self.x, self.sums, self.leaves, self.masks = x, sums, leaves, masks


class _TreeArrays:
    """Many decision trees packed into two arrays (a uint32 word and a float32 threshold per
    node), walked by the compiled kernel above. Nodes are laid out level by level across all
    trees, each node's two children side by side (the right child is left + 1), so a step needs
    no branch. Every size takes this walk instead of a library call: scikit-learn's forest
    ``predict`` costs ~10 ms for 100 trees on one row and XGBoost's ``inplace_predict`` ~0.3 ms of
    fixed overhead per call; for 1,000 rows of 800 trees of depth 6 the walk takes 13.8 ms on
    one thread against the library's 33-45 ms (the previous walk, which tested for missing
    values at every step and read the rows in place: 25.6 ms).

    Inputs are rounded to float32 first, as both libraries do, so every split can be a float32
    ``x < t``: XGBoost's own rule on its float32 thresholds; for scikit-learn's ``x <= t`` (t in
    float64), t becomes the float32 just above the largest float32 <= t, which sends every
    float32 x the same way. NaN follows the node's default direction: the kernel reads it as
    -inf or +inf, whichever sends it there."""

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
        value_float32: bool = False,
    ):
        offsets = np.cumsum([0] + [len(f) for f in feature[:-1]])
        lc = np.concatenate([np.where(c < 0, -1, c + off) for c, off in zip(left, offsets, strict=True)])
        rc = np.concatenate([np.where(c < 0, -1, c + off) for c, off in zip(right, offsets, strict=True)])
        # Level by level over all trees: the roots, then the children of every split node, in
        # pairs (left, right).
        order, level = [], np.asarray(offsets, dtype=np.int64)
        while len(level):
            order.append(level)
            split = level[lc[level] >= 0]
            level = np.column_stack([lc[split], rc[split]]).ravel()
        old = np.concatenate(order)  # new position → old node id
        new = np.empty(len(lc), dtype=np.int64)
        new[old] = np.arange(len(old))
        is_split = lc[old] >= 0
        t = np.concatenate(threshold).astype(np.float64)[old]
        t32 = t.astype(np.float32)
        if not strict:
            t32 = np.where(t32 > t, np.nextafter(t32, np.float32(-np.inf)), t32)  # largest <= t
            t32 = np.nextafter(t32, np.float32(np.inf))
        features = np.where(is_split, np.concatenate(feature)[old], 0).astype(np.int64)
        if len(old) >= 1 << (32 - _CHILD_SHIFT) or 2 * features.max(initial=0) + 1 > _COLUMN_MASK:
            raise NotCompilable(f"trees of {len(old)} nodes on {features.max(initial=0) + 1} features")
        children = np.where(is_split, new[np.maximum(lc[old], 0)], np.arange(len(old)))
        missing_right = is_split & ~np.concatenate(nan_left).astype(bool)[old]
        # Column 2f + 1 holds feature f with missing values as +inf: x >= t sends them right.
        self.words = ((children << _CHILD_SHIFT) | (2 * features + missing_right)).astype(np.uint32)
        self.thresholds = np.where(is_split, t32, np.float32(np.nan)).astype(np.float32)
        # Leaf values in their own precision: XGBoost's are float32, half the cache space.
        values = np.concatenate(value)[old]
        self.value = np.ascontiguousarray(values, dtype=np.float32 if value_float32 else np.float64)
        self.roots = np.ascontiguousarray(new[offsets], dtype=np.int32)
        self.depth = int(depth)
        self.n_trees = len(offsets)
        # Per node, the bit of the column a split reads (leaves read none); see _path_kernels.
        self.bits = np.where(is_split, np.left_shift(np.uint64(1), (features % 64).astype(np.uint64)), 0)
        self.bits = self.bits.astype(np.uint64)
        # The walk of a few rows in numpy (``_numpy_rows``): each node's child and column as indices.
        self._child = (self.words >> _CHILD_SHIFT).astype(np.intp)
        self._column = (self.words & _COLUMN_MASK).astype(np.intp)
        self._roots = self.roots.astype(np.intp)

    def _numpy_rows(self, x: np.ndarray, init: float, float32: bool) -> np.ndarray:
        """``sums`` of a few rows (float32 features) in numpy: every row and tree one level per
        step, then each row's leaves added in tree order from ``init`` (a cumulative sum adds in
        order, in the leaves' precision), so the result is the kernel's to the bit. A request
        scores one row (TelecomAI: the row and its explanation's 19 variants): this keeps numba,
        and the ~110 MB its compiler takes in each worker (issue 33), out of a worker until it
        scores more (``_NUMPY_WALK_STEPS`` says for which sizes and what it costs)."""
        n = x.shape[0]
        if n == 1:
            return self._numpy_row(x[0], init, float32)
        # Row r's column 2f holds feature f with missing as -inf, column 2f + 1 with missing as +inf.
        xb = np.where(np.isnan(x)[:, :, None], _MISSING_SIDES, x[:, :, None]).ravel()
        child, column, thresholds = self._child, self._column, self.thresholds
        node = np.broadcast_to(self._roots, (n, self.n_trees))
        start = (np.arange(n, dtype=np.intp) * (2 * x.shape[1]))[:, None]
        for _ in range(self.depth):
            node = child[node] + (xb[start + column[node]] >= thresholds[node])
        acc = np.empty((n, self.n_trees + 1), dtype=np.float32 if float32 else np.float64)
        acc[:, 0] = init
        acc[:, 1:] = self.value[node]
        return np.cumsum(acc, axis=1)[:, -1].astype(np.float64)

    def _numpy_row(self, row: np.ndarray, init: float, float32: bool) -> np.ndarray:
        """``_numpy_rows`` of one row (a /predict request), on 1-D arrays: the same steps without
        the row offsets and broadcasting, which were 40% of a BankChurn request's walk (400 trees of
        depth 3: 105 against 63 us, the same bits; issue 33)."""
        xb = np.where(np.isnan(row)[:, None], _MISSING_SIDES, row[:, None]).ravel()
        child, column, thresholds = self._child, self._column, self.thresholds
        node = self._roots
        for _ in range(self.depth):
            node = child[node] + (xb[column[node]] >= thresholds[node])
        acc = np.empty(self.n_trees + 1, dtype=np.float32 if float32 else np.float64)
        acc[0] = init
        acc[1:] = self.value[node]
        return np.cumsum(acc)[-1:].astype(np.float64)

    def sums(self, m: Matrix, init: float = 0.0, float32: bool = False) -> np.ndarray:
        """Per row, ``init`` plus the leaf value reached in every tree, added in tree order in
        float64, or in float32 (``float32=True``: XGBoost's own arithmetic)."""
        x = np.ascontiguousarray(m, dtype=np.float32)
        if x.shape[0] * self.n_trees * self.depth <= _NUMPY_WALK_STEPS:
            return self._numpy_rows(x, init, float32)
        out = np.empty(x.shape[0], dtype=np.float64)
        kernel = _tree_kernel()
        args = (self.roots, self.words, self.thresholds, self.value, self.depth, float(init), bool(float32))
        threads = min(_CORES, x.shape[0] // _ROWS_PER_THREAD)
        if threads <= 1:
            kernel(x, *args, out)
            return out
        bounds = np.linspace(0, x.shape[0], threads + 1).astype(int)
        list(_pool().map(lambda a, b: kernel(x[a:b], *args, out[a:b]), bounds[:-1], bounds[1:]))
        return out

    def walk_paths(self, m: Matrix, init: float = 0.0) -> TreePaths:
        """``sums(m, init)`` (float64, the same arithmetic), keeping each walk for ``variant_sums``."""
        x = np.ascontiguousarray(m, dtype=np.float32)
        n = x.shape[0]
        sums = np.empty(n, dtype=np.float64)
        leaves = np.empty((n, self.n_trees), dtype=np.float64)
        masks = np.empty((n, self.n_trees), dtype=np.uint64)
        walk = _path_kernels()[0]
        args = (self.roots, self.words, self.thresholds, self.value, self.bits, self.depth, float(init))

        def part(a: int, b: int) -> None:
            walk(x[a:b], *args, sums[a:b], leaves[a:b], masks[a:b])

        _split_rows(part, n)
        return TreePaths(x, sums, leaves, masks)

    def variant_sums(self, paths: TreePaths, m: Matrix, base_rows: np.ndarray) -> np.ndarray:
        """``sums(m, init)`` for rows ``m`` that are copies of the rows walked in ``paths``
        (``m[i]`` of row ``base_rows[i]``) with a few columns changed, re-walking only the trees
        whose path in that row read a changed column. Equal to ``sums`` up to float64 rounding
        (the changed leaves are added as differences), ~1e-15 of the sum."""
        xv = np.ascontiguousarray(m, dtype=np.float32)
        base_rows = np.ascontiguousarray(base_rows, dtype=np.int64)
        order = np.argsort(base_rows, kind="stable")
        out = np.empty(len(xv), dtype=np.float64)
        column_bits = np.left_shift(np.uint64(1), (np.arange(xv.shape[1]) % 64).astype(np.uint64))
        kernel = _path_kernels()[1]
        args = (self.roots, self.words, self.thresholds, self.value, column_bits, self.depth)

        def part(a: int, b: int) -> None:
            kernel(xv, paths.x, base_rows, order[a:b], *args, paths.sums, paths.leaves, paths.masks, out)

        _split_rows(part, len(xv))
        return out


class Scorer:
    """A compiled estimator: calling it scores an encoded matrix. ``walk`` scores it too and keeps
    what ``variants`` needs to score copies of its rows with a few columns changed for less
    (tree ensembles: only the trees whose path read a changed column are walked again); by
    default ``variants`` scores the copies in full."""

    def __init__(
        self,
        score: Callable[[Matrix], np.ndarray],
        walk: Callable[[Matrix], tuple[np.ndarray, Any]] | None = None,
        variants: Callable[[Any, Matrix, np.ndarray], np.ndarray] | None = None,
    ):
        self._score, self._walk, self._variants = score, walk, variants

    def __call__(self, m: Matrix) -> np.ndarray:
        return self._score(m)

    def walk(self, m: Matrix) -> tuple[np.ndarray, Any]:
        return self._walk(m) if self._walk is not None else (self._score(m), None)

    def variants(self, walked: Any, m: Matrix, base_rows: np.ndarray) -> np.ndarray:
        """Scores of ``m``, whose row i is row ``base_rows[i]`` of the matrix ``walk`` was given,
        with some columns changed."""
        if self._variants is None or walked is None:
            return self._score(m)
        return self._variants(walked, m, base_rows)


def precompile() -> None:
    """Compile every kernel of the fast path into numba's disk cache (``NUMBA_CACHE_DIR``) now.

    The images run this at build time, and a container copies the cache to its tmpfs at start
    (deploy/docker/entrypoint.sh): a server's warm-up then loads the tree walks instead of
    compiling them at every start. Real estimators go through the serving path (both leaf
    precisions, one row and a multi-threaded batch), so the cached signatures are the served ones.
    """
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from xgboost import XGBClassifier, XGBRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    label, target = (x[:, 0] > 0).astype(int), x[:, 1]
    scorers = [
        compile_proba(RandomForestClassifier(n_estimators=2, max_depth=3, random_state=0).fit(x, label)),
        compile_proba(XGBClassifier(n_estimators=2, max_depth=3).fit(x, label)),
        compile_regressor(RandomForestRegressor(n_estimators=2, max_depth=3, random_state=0).fit(x, target)),
        compile_regressor(XGBRegressor(n_estimators=2, max_depth=3).fit(x, target)),
    ]
    batch = np.repeat(x, 2 * _ROWS_PER_THREAD * _CORES // len(x) + 1, axis=0)
    for scorer in scorers:
        for rows in (x[:1], batch):
            scorer(rows)
    _path_kernels()  # compiles itself for both leaf precisions


def _split_rows(part: Callable[[int, int], None], n: int) -> None:
    """``part(a, b)`` over rows 0..n, on the machine's cores when there are enough rows."""
    threads = min(_CORES, n // _ROWS_PER_THREAD)
    if threads <= 1:
        part(0, n)
        return
    bounds = np.linspace(0, n, threads + 1).astype(int)
    list(_pool().map(part, bounds[:-1].tolist(), bounds[1:].tolist()))


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


def _compile_forest_proba(est: Any) -> Scorer:
    def p_positive(t: Any) -> np.ndarray:
        v = t.value[:, 0, :]  # per-node class weights (fractions since scikit-learn 1.4)
        return np.asarray(v[:, 1] / np.maximum(v.sum(axis=1), 1e-300), dtype=np.float64)

    trees = _sklearn_trees(est.estimators_, p_positive)

    def proba(m: Matrix) -> np.ndarray:
        return trees.sums(m) / trees.n_trees

    def walk(m: Matrix) -> tuple[np.ndarray, TreePaths]:
        paths = trees.walk_paths(m)
        return paths.sums / trees.n_trees, paths

    def variants(paths: TreePaths, m: Matrix, base_rows: np.ndarray) -> np.ndarray:
        return trees.variant_sums(paths, m, base_rows) / trees.n_trees

    return Scorer(proba, walk, variants)


def _compile_forest_regressor(est: Any) -> Scorer:
    if est.n_outputs_ != 1:
        raise NotCompilable("multi-output forest")
    trees = _sklearn_trees(est.estimators_, lambda t: np.asarray(t.value[:, 0, 0], dtype=np.float64))

    def predict(m: Matrix) -> np.ndarray:
        return trees.sums(m) / trees.n_trees

    return Scorer(predict)


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
        value_float32=True,
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
    walked = np.float32(trees.sums(probe, float(base32), float32=True)[0])
    margin = booster.inplace_predict(probe, predict_type="margin", validate_features=False)
    return base32 if walked == np.float32(margin[0]) else None


def _xgb_fn(model: Any) -> Scorer:
    """P(class 1) (binary:logistic) or the prediction (reg:squarederror) of an XGBoost model:
    the compiled tree walk at every size (2 threads, against the library's own predictor: 800
    trees of depth 6, 1,000 rows 7.8 vs 14.2 ms, 4,000 rows 27 vs 53 ms; 400 trees of depth 3,
    100,000 rows 176 vs 263 ms), ``inplace_predict`` for models the walk does not cover."""
    booster = model.get_booster()
    # Trained with one thread (n_jobs=1, CV runs in parallel elsewhere); when the library
    # predicts, it may use every core.
    booster.set_param({"nthread": 0})

    def library(m: Matrix) -> np.ndarray:
        return np.asarray(booster.inplace_predict(m, validate_features=False), dtype=np.float64)

    if getattr(model, "best_iteration", None) is not None and hasattr(model, "best_score"):
        # early-stopped: inplace_predict limits the trees; keep one source of truth
        return Scorer(library)
    trees, objective = _xgb_trees(booster)
    if objective not in ("binary:logistic", "reg:squarederror"):
        return Scorer(library)

    @functools.cache
    def bases() -> tuple[float, np.float32 | None]:
        """The base margin, read back from the library itself (its JSON keeps base_score
        rounded); on first use, not at load (~0.2 s for an 800-tree booster)."""
        probe = np.zeros((1, int(booster.num_features())))
        margin = float(booster.inplace_predict(probe, predict_type="margin", validate_features=False)[0])
        base32 = _float32_base(booster, trees, probe) if objective == "reg:squarederror" else None
        return margin - float(trees.sums(probe)[0]), base32

    def link(z: np.ndarray) -> np.ndarray:
        if objective == "binary:logistic":
            return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)
        return z

    def score(m: Matrix) -> np.ndarray:
        base, base32 = bases()
        if base32 is not None:  # the library's own arithmetic: float32, tree by tree, in order
            return trees.sums(m, float(base32), float32=True)
        return link(trees.sums(m, base))

    def walk(m: Matrix) -> tuple[np.ndarray, TreePaths | None]:
        base, base32 = bases()
        if base32 is not None:  # float32 sums: no shortcut (regressors, which explain otherwise)
            return score(m), None
        paths = trees.walk_paths(m, base)
        return link(paths.sums), paths

    def variants(paths: TreePaths, m: Matrix, base_rows: np.ndarray) -> np.ndarray:
        return link(trees.variant_sums(paths, m, base_rows))

    return Scorer(score, walk, variants)


def compile_proba(est: Any) -> Scorer:
    """Final classifier → function(matrix) → P(class 1)."""
    from xgboost import XGBClassifier

    if isinstance(est, XGBClassifier):
        if est.n_classes_ != 2:
            raise NotCompilable("multiclass XGBoost")
        return _xgb_fn(est)
    if isinstance(est, LogisticRegression) and len(est.classes_) == 2:
        coef, intercept = est.coef_[0], float(est.intercept_[0])

        def logistic(m: Matrix) -> np.ndarray:
            # einsum, not BLAS: OpenBLAS runs a batch's product on two threads that wait for
            # each other while the tree walk holds the cores (5-10 ms instead of 0.1 ms for the
            # 11,000 rows of a TelecomAI batch's explanations, measured under load).
            z = np.einsum("ij,j->i", m, coef) + intercept
            return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

        return Scorer(logistic)
    if isinstance(est, VotingClassifier):
        if est.voting != "soft":
            raise NotCompilable("hard voting")
        members = [compile_proba(e) for e in est.estimators_]
        weights = np.ones(len(members)) if est.weights is None else np.asarray(est.weights, float)
        weights = weights / weights.sum()

        def vote(m: Matrix) -> np.ndarray:
            return np.asarray(sum(w * f(m) for w, f in zip(weights, members, strict=True)), dtype=np.float64)

        def vote_walk(m: Matrix) -> tuple[np.ndarray, list[Any]]:
            walked = [f.walk(m) for f in members]
            scores = sum(w * p for w, (p, _) in zip(weights, walked, strict=True))
            return np.asarray(scores, dtype=np.float64), [kept for _, kept in walked]

        def vote_variants(walked: list[Any], m: Matrix, base_rows: np.ndarray) -> np.ndarray:
            parts = zip(weights, members, walked, strict=True)
            return np.asarray(sum(w * f.variants(k, m, base_rows) for w, f, k in parts), dtype=np.float64)

        return Scorer(vote, vote_walk, vote_variants)
    if isinstance(est, RandomForestClassifier | ExtraTreesClassifier) and len(est.classes_) == 2:
        return _compile_forest_proba(est)
    if hasattr(est, "predict_proba") and hasattr(est, "classes_") and len(est.classes_) == 2:
        # Any other fitted scikit-learn classifier on a numeric matrix (e.g. RandomForest).
        def generic(m: Matrix) -> np.ndarray:
            return np.asarray(est.predict_proba(m)[:, 1], dtype=np.float64)

        return Scorer(generic)
    raise NotCompilable(f"classifier {type(est).__name__}")


def compile_regressor(est: Any) -> Scorer:
    from xgboost import XGBRegressor

    if isinstance(est, TransformedTargetRegressor):
        inner = compile_regressor(est.regressor_)
        inverse = est.inverse_func
        if inverse is None:
            raise NotCompilable("TransformedTargetRegressor with a transformer")

        def ttr(m: Matrix) -> np.ndarray:
            return np.asarray(inverse(inner(m)), dtype=np.float64)

        return Scorer(ttr)
    if isinstance(est, XGBRegressor):
        return _xgb_fn(est)
    if isinstance(est, VotingRegressor):
        if any(isinstance(e, str) for _, e in est.estimators):
            raise NotCompilable("VotingRegressor with a dropped member")
        parts = [compile_regressor(e) for e in est.estimators_]
        w = None if est.weights is None else np.asarray(est.weights, dtype=np.float64)

        def average(m: Matrix) -> np.ndarray:  # exactly VotingRegressor.predict's arithmetic
            return np.asarray(np.average(np.column_stack([f(m) for f in parts]), axis=1, weights=w))

        return Scorer(average)
    if isinstance(est, RandomForestRegressor | ExtraTreesRegressor):
        return _compile_forest_regressor(est)
    if hasattr(est, "predict"):

        def generic(m: Matrix) -> np.ndarray:
            return np.asarray(est.predict(m), dtype=np.float64)

        return Scorer(generic)
    raise NotCompilable(f"regressor {type(est).__name__}")
