"""A whole champion pipeline compiled: its feature steps on columns, then the compiled estimator;
plus the shortcut that rescoring substituted rows (explanations) recomputes only what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline

from portfolio.core.fastpath.columns import Columns, Matrix, NotCompilable, equal_to, filled_like
from portfolio.core.fastpath.encoders import CompiledColumnTransformer, compile_column_transformer
from portfolio.core.fastpath.trees import Scorer, compile_proba, compile_regressor
from portfolio.core.tasks import Task, task_named


# ------------------------------------------------------------------------------- pipelines
class _Substituted(NamedTuple):
    """One block of ``CompiledPipeline.substitutions``: its input columns, their features and
    encoding, and for each substituted field (in order) the rows where its value changes."""

    cols: Columns
    features: Columns
    matrix: Matrix
    names: list[str]
    changed: list[np.ndarray]
    substitutes: Mapping[str, Any]


class CompiledPipeline:
    """A fitted pipeline as numpy code: its feature steps' ``transform_columns``, the compiled
    column transformer, then the compiled estimator. Calling it scores typed field columns.

    ``derived_from``: each column the feature steps compute, with the input fields it is
    computed from (every other column passes through as the same array), or None when a step
    does not declare it (``substitutions`` then runs the feature steps on every substituted
    row)."""

    def __init__(
        self,
        column_steps: list[Callable[[Columns], Columns]],
        encoder: CompiledColumnTransformer,
        model_fn: Scorer,
        derived_from: Mapping[str, frozenset[str]] | None = None,
    ):
        self.column_steps, self.encoder, self.model_fn = column_steps, encoder, model_fn
        self.derived_from = dict(derived_from) if derived_from is not None else None
        # input field → the derived columns the encoder reads that are computed from it
        self._dependents: dict[str, list[str]] = {}
        self._substitutes: dict[str, tuple[Any, list[tuple[np.ndarray, np.ndarray]]]] = {}
        for column, inputs in (self.derived_from or {}).items():
            if column in encoder.inputs:
                for field in sorted(inputs):
                    self._dependents.setdefault(field, []).append(column)

    def features(self, cols: Columns) -> Columns:
        for f in self.column_steps:
            cols = f(cols)
        return cols

    def __call__(self, cols: Columns) -> np.ndarray:
        return self.model_fn(self.encoder(self.features(cols)))

    def substitutions(
        self, cols: Columns, substitutes: Mapping[str, Any], block_rows: int = 2048
    ) -> tuple[np.ndarray, np.ndarray]:
        """The rows' scores, and (rows x len(substitutes)) the score of each row with one field
        set to its substitute: what scoring every substituted row would give, for less work. A
        row whose value already is the substitute keeps its own score (about half of a TelecomAI
        batch's substitutions); the substituted rows' encodings are the rows' own with only
        the columns a substitution changes encoded again; and their trees are walked again only
        where the row's own path read a changed column (``Scorer.variants``). In blocks of
        ``block_rows`` rows, which bounds the memory the kept walks take (~16 bytes per row and
        tree)."""
        n = len(next(iter(cols.values())))
        if n > block_rows:
            blocks = ({c: v[a : a + block_rows] for c, v in cols.items()} for a in range(0, n, block_rows))
            parts = [self.substitutions(block, substitutes, block_rows) for block in blocks]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        names = list(substitutes)
        features = self.features(cols)
        matrix = self.encoder(features)
        changed = [np.flatnonzero(~equal_to(cols[c], substitutes[c])) for c in names]
        rows = np.concatenate(changed)
        scores, walked = self.model_fn.walk(matrix)
        out = np.repeat(scores[:, None], len(names), axis=1)
        if not len(rows):
            return scores, out
        which = np.repeat(np.arange(len(names)), [len(r) for r in changed])
        # The substituted rows' encodings: segment k of ``rows`` substitutes field names[k].
        block = _Substituted(cols, features, matrix, names, changed, substitutes)
        if self.derived_from is not None and self._passes_through(cols, features):
            encoded = self._encode_declared(block)
        else:
            encoded = self._encode_afresh(block)
        out[rows, which] = self.model_fn.variants(walked, encoded, rows)
        return scores, out

    def _passes_through(self, cols: Columns, features: Columns) -> bool:
        """The declaration holds for these rows: every encoded column not declared derived is
        the input array itself (a step that changed one without saying so would make
        ``_encode_declared`` wrong)."""
        derived = self.derived_from or {}
        return all(features[c] is cols.get(c) for c in self.encoder.inputs if c not in derived)

    def _encode_declared(self, block: _Substituted) -> Matrix:
        """With the feature steps' declared dependencies: a field the encoder reads as it is
        takes its substitute's encoding in its own columns (one value, encoded once); the
        derived columns computed from a substituted field are computed again on those rows
        only, from the fields they are declared to read (TelecomAI: 3 derived columns from 9
        of its 19 fields)."""
        cols, features, matrix, names, changed, substitutes = block
        derived = self.derived_from or {}
        encoded = matrix[np.concatenate(changed)]
        again: list[tuple[str, np.ndarray, int]] = []  # (field, its rows, first position)
        start = 0
        for c, r in zip(names, changed, strict=True):
            if c in self.encoder.inputs and c not in derived:
                for outputs, code in self._substitute_encoding(c, substitutes[c], cols[c], features):
                    encoded[start : start + len(r), outputs] = code
            if c in self._dependents:
                again.append((c, r, start))
            start += len(r)
        if not again:
            return encoded
        base = np.concatenate([r for _, r, _ in again])
        sub = {f: cols[f][base] for f in set().union(*derived.values())}
        offset = 0
        for c, r, _ in again:
            sub[c][offset : offset + len(r)] = filled_like(cols[c], substitutes[c], len(r))
            offset += len(r)
        varied = self.features(sub)
        # One encoding per derived column, over the rows of every field it is computed from.
        local: dict[str, list[np.ndarray]] = {}
        positions: dict[str, list[np.ndarray]] = {}
        offset = 0
        for c, r, first in again:
            for column in self._dependents[c]:
                local.setdefault(column, []).append(np.arange(offset, offset + len(r)))
                positions.setdefault(column, []).append(np.arange(first, first + len(r)))
            offset += len(r)
        for column, parts in local.items():
            values = varied[column][np.concatenate(parts)]
            self.encoder.encode_into(encoded, np.concatenate(positions[column]), column, values, features)
        return encoded

    def _substitute_encoding(
        self, name: str, value: Any, values: np.ndarray, filler: Columns
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(output columns, encoding) of one substitute value of a field the encoder reads as it
        is; kept, since a service substitutes the same reference values in every request."""
        kept = self._substitutes.get(name)
        # The same object each time (the reference profile's); an equal value of another object
        # is fine too (a missing one is just encoded again).
        if kept is not None and (kept[0] is value or (type(kept[0]) is type(value) and kept[0] == value)):
            return kept[1]
        single = filled_like(values, value, 1)
        places = self.encoder.inputs[name]
        encoding = [(out, block.encode_column(j, single, filler)[0]) for block, j, out in places]
        self._substitutes[name] = (value, encoding)
        return encoding

    def _encode_afresh(self, block: _Substituted) -> Matrix:
        """Without declared dependencies: every substituted row goes through the feature steps,
        and the encoder re-encodes the input columns that differ from the row's own."""
        cols, features, matrix, names, changed, substitutes = block
        rows = np.concatenate(changed)
        variants = {c: v[rows] for c, v in cols.items()}
        segments: dict[str, np.ndarray] = {}  # field → the variant rows that substitute it
        start = 0
        for c, r in zip(names, changed, strict=True):
            variants[c][start : start + len(r)] = filled_like(cols[c], substitutes[c], len(r))
            segments[c] = np.arange(start, start + len(r))
            start += len(r)
        before = {c: v[rows] for c, v in features.items()}
        varied = self.features(variants)
        # A field the feature steps pass through as it is (the same array) differs from the
        # rows only where it is substituted: no need to compare its values.
        known = {
            c: segments.get(c, np.empty(0, dtype=np.intp)) for c in variants if varied.get(c) is variants[c]
        }
        return self.encoder.patch(matrix[rows], varied, before, known)


def compile_pipeline(pipe: Any, task: Task | str) -> CompiledPipeline:
    """A fitted (sklearn or imblearn) Pipeline → a callable: columns → scores (the task's: a
    probability or a value)."""
    if not isinstance(pipe, Pipeline):  # imblearn's Pipeline subclasses sklearn's
        raise NotCompilable(f"model is a {type(pipe).__name__}, not a Pipeline")
    column_steps: list[Callable[[Columns], Columns]] = []
    derived_from: dict[str, frozenset[str]] | None = {}
    encoder: CompiledColumnTransformer | None = None
    for _, step in pipe.steps[:-1]:
        if step is None or step == "passthrough" or hasattr(step, "fit_resample"):
            continue  # samplers only act during fit
        if encoder is not None:
            raise NotCompilable(f"step {type(step).__name__} after the column transformer")
        if isinstance(step, ColumnTransformer):
            encoder = compile_column_transformer(step)
        elif hasattr(step, "transform_columns"):
            column_steps.append(step.transform_columns)
            derived_from = _compose_derived(derived_from, getattr(step, "derived_from", None))
        elif getattr(step, "is_identity_transform", False):
            continue
        else:
            raise NotCompilable(f"feature step {type(step).__name__} has no transform_columns")
    if encoder is None:
        raise NotCompilable("no ColumnTransformer before the estimator")
    final = pipe.steps[-1][1]
    probability = task_named(task).score_kind == "probability"
    model_fn = compile_proba(final) if probability else compile_regressor(final)
    return CompiledPipeline(column_steps, encoder, model_fn, derived_from)


def _compose_derived(
    earlier: dict[str, frozenset[str]] | None, declared: Mapping[str, Sequence[str]] | None
) -> dict[str, frozenset[str]] | None:
    """The input fields behind each derived column after one more feature step that declares
    ``derived_from`` (column → the columns it reads; None: undeclared, so unknown)."""
    if earlier is None or declared is None:
        return None
    out = dict(earlier)
    for column, reads in declared.items():
        out[column] = frozenset().union(*(earlier.get(c, frozenset([c])) for c in reads))
    return out


def unwrap(model: Any) -> Any:
    """The fitted inner pipeline of the core's wrappers (FixedThresholdClassifier, IntervalRegressor)."""
    inner = getattr(model, "estimator_", None)
    return inner if inner is not None else model
