"""Turning validated inputs into a service's outputs, identically for the API, batch prediction,
evaluation and the dashboard.

At load time the champion is compiled into the fast path (``core/fastpath/``); when a model
cannot be compiled, the same outputs come from the scikit-learn pipeline on a DataFrame and
``inference`` says why (shown in ``/model`` and logged)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd

from portfolio.core.explain.substitution import substitution_scores
from portfolio.core.fastpath.columns import (
    SMALL_BATCH_ROWS,
    Columns,
    NotCompilable,
    OneRecord,
    frame_to_columns,
    to_columns,
)
from portfolio.core.fastpath.pipeline import CompiledPipeline, compile_pipeline, unwrap
from portfolio.core.fetch import RegistryUnavailable, load_fetched, load_serving_champion, resolve_and_fetch
from portfolio.core.model_cache import CHAMPION, LoadedModel
from portfolio.core.processes import freeze_heap, release_freed_memory
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec

log = logging.getLogger(__name__)


class Predictor:
    """A loaded champion plus its spec."""

    def __init__(self, spec: ServiceSpec, loaded: LoadedModel, compile: bool = True):
        self.spec = spec
        self.loaded = loaded
        self.model = loaded.model
        self.version = loaded.version
        self.threshold = loaded.threshold
        self._fast: CompiledPipeline | None = None
        self.inference = "pipeline (compilation disabled)"
        if compile:
            try:
                self._fast = compile_pipeline(unwrap(self.model), spec.strategy)
                self.inference = "compiled"
            except NotCompilable as exc:
                self.inference = f"pipeline (not compilable: {exc})"
                log.warning("%s v%s: serving through the pipeline: %s", spec.name, self.version, exc)
        # One record goes to the compiled encoder as its values (fastpath.columns.OneRecord) when
        # nothing else reads its columns: no feature steps, no extra outputs, no date fields.
        self._one_record = (
            self._fast is not None
            and not self._fast.column_steps
            and spec.extra_outputs is None
            and all(f.kind in ("int", "float", "text", "category") for f in spec.fields)
        )

    @property
    def compiled(self) -> bool:
        return self._fast is not None

    def warm_up(self, batch: bool = False) -> None:
        """Score the fields' documented example once, so the first request does not pay the
        one-off costs of the fast path (each booster's base margin, ~0.2 s). Servers call this
        at load, before they say ready; batch scoring never needs it.

        ``batch``: also score the example as a batch (its own walks: explanations of more than
        SMALL_BATCH_ROWS rows keep the rows' paths). Off for an API's champion: a request's
        rows (TelecomAI: with its explanation's variants) are walked in numpy
        (``fastpath.trees``), so a worker that only answers ``/predict`` never loads numba's
        compiler (~110 MB per worker, issue 33); its first batch pays numba's import and its
        walk instead (0.38 + 0.48 s measured, once)."""
        if self._fast is None:
            return
        try:
            example = {f.name: f.example for f in self.spec.fields}
            self.predict_records([example])
            if batch:
                self.predict_records([example] * (SMALL_BATCH_ROWS + 1))
        except Exception as exc:  # an example the schema rejects costs only the first request's speed
            log.warning("%s v%s: warm-up prediction failed: %s", self.spec.name, self.version, exc)

    @property
    def output_columns(self) -> list[str]:
        return self.spec.strategy.output_columns(self.spec)

    # -- scores ---------------------------------------------------------------------------------
    def _pipeline_scores(self, X: pd.DataFrame) -> np.ndarray:
        return self.spec.strategy.scores(self.model, X)

    def scores_columns(self, cols: Columns) -> np.ndarray:
        """P(positive) or the point prediction for typed field columns (``fastpath.columns.to_columns``)."""
        if self._fast is not None:
            return self._fast(cols)
        # Typed columns hold what schema.coerce produces (float64/NaN, datetime64, object/None).
        return self._pipeline_scores(pd.DataFrame(cols, columns=self.spec.feature_names))

    def substitution_scores(
        self, cols: Columns, substitutes: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The rows' scores and (rows x fields) each row's score with one field set to its
        substitute (``explain.substitution_scores``; the compiled path re-encodes only what a
        substitution changes)."""
        rows = len(next(iter(cols.values())))
        if self._fast is not None and rows > SMALL_BATCH_ROWS:
            return self._fast.substitutions(cols, substitutes)
        # Requests: one model call on the stacked variants costs less than the bookkeeping
        # (one row: ~0.25 vs ~1.3 ms; they break even near 64 rows).
        return substitution_scores(self.scores_columns, cols, substitutes)

    def scores_frame(self, typed: pd.DataFrame) -> np.ndarray:
        """P(positive) or the point prediction for typed rows."""
        if self._fast is not None:
            return self._fast(frame_to_columns(typed, self.spec.fields))
        return self._pipeline_scores(typed[self.spec.feature_names])

    def scores_records(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        return self.scores_columns(to_columns(records, self.spec.fields))

    # -- outputs --------------------------------------------------------------------------------
    def _outputs(self, cols: Columns, explain: bool = True) -> dict[str, Any]:
        """Every output column for typed field columns; ``explain=False`` skips the service's
        per-row explanations (their columns hold None)."""
        return self.spec.strategy.outputs(self, cols, explain)

    def predict_frame(self, typed: pd.DataFrame, explain: bool = True) -> pd.DataFrame:
        """Batch path: rows already validated and typed (``schema.validate_frame``)."""
        out = self._outputs(frame_to_columns(typed, self.spec.fields), explain)
        return pd.DataFrame(out, index=typed.index)

    def predict_records(
        self,
        records: Sequence[dict[str, Any]],
        explain: bool = True,
        values: Mapping[str, Sequence[Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """API path: records already validated by the request model (``values``: each field's
        values already taken out of them, see ``fastpath.columns.to_columns``); no DataFrame on the
        compiled path."""
        return as_records(self.predict_columns(records, explain, values))

    def predict_columns(
        self,
        records: Sequence[dict[str, Any]] | None,
        explain: bool = True,
        values: Mapping[str, Sequence[Any]] | None = None,
    ) -> dict[str, np.ndarray]:
        """``predict_records``' outputs as one array per output column (``records`` may be None
        when ``values`` are given)."""
        fields = self.spec.fields
        if values is not None and self._one_record and len(values[fields[0].name]) == 1:
            # A Mapping of lazily built columns; the compiled path reads its values (issue 33).
            return self._outputs(cast(Columns, OneRecord(values, fields)), explain)
        return self._outputs(to_columns(records, fields, values), explain)


def as_records(
    columns: Mapping[str, np.ndarray], constants: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Output columns → one dict per row (numpy values as Python ones), with ``constants``
    (e.g. the model version) in every dict."""
    if not columns:
        return []
    keys = [*columns, *(constants or {})]
    listed = [np.asarray(c).tolist() for c in columns.values()]
    listed += [itertools.repeat(v) for v in (constants or {}).values()]  # type: ignore[misc]
    return [dict(zip(keys, row)) for row in zip(*listed)]  # noqa: B905 (repeat is endless)


def load_predictor(
    spec: ServiceSpec, settings: Settings, version: str | int | None = None, warm: bool = False
) -> Predictor:
    """The one way to load a model for scoring: a registered version, or the champion.

    Args:
        spec: The service.
        settings: Where the registry and the local model cache are.
        version: A registered version; None loads the champion (with retries, and the cached
            champion when the tracking server stays unreachable).
        warm: Score the fields' example once (compilation, caches) before returning.

    Returns:
        The predictor. Raises ``registry.NoChampionError`` when there is no champion.
    """
    # Imported here: an API worker loads through ``core/fetch.py`` and never imports MLflow.
    from portfolio.core import registry

    registry.configure(settings)
    loaded = (
        registry.load_version(spec, settings, version)
        if version is not None
        else registry.load_champion(spec, settings)
    )
    predictor = Predictor(spec, loaded)
    if warm:
        predictor.warm_up()
    return predictor


class ModelHolder:
    """The model a running service answers with. Loads in the background (so /health answers at
    once and /ready says 503 until a model is there), retries the tracking server with backoff,
    and swaps in a newer champion atomically; a failed refresh keeps the current model."""

    def __init__(self, spec: ServiceSpec, settings: Settings):
        self.spec = spec
        self.settings = settings
        self.predictor: Predictor | None = None
        self.error: str | None = None
        self.state = "loading"
        # Why the last champion refresh failed (tracking server unreachable), None once one
        # succeeds; /ready says "degraded" meanwhile (the model in memory still answers).
        self.tracking_error: str | None = None
        self.refreshed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def load_now(self) -> Predictor:
        t0 = time.perf_counter()
        # The registry is read in a child process (core/fetch.py): this process never imports MLflow.
        predictor = Predictor(self.spec, load_serving_champion(self.spec, self.settings))
        t1 = time.perf_counter()
        predictor.warm_up()  # before /ready says ready
        t2 = time.perf_counter()
        with self._lock:
            self.predictor, self.error, self.state = predictor, None, "ready"
        freeze_heap()  # a full collection no longer walks the model (processes.freeze_heap)
        release_freed_memory()  # not the load's peak (processes.release_freed_memory)
        # Where a cold start goes (make images reads these): registry fetch, fast-path build+warm-up.
        log.info(
            "%s v%s loaded (%s)",
            self.spec.name,
            predictor.version,
            predictor.loaded.source,
            extra={"fetch_s": round(t1 - t0, 3), "warm_up_s": round(t2 - t1, 3)},
        )
        return predictor

    def refresh(self) -> bool:
        """Swap in the current champion if it changed. True when a new version was loaded."""
        current = self.predictor.version if self.predictor else None
        try:
            version, fetched = resolve_and_fetch(self.settings, self.spec.name, CHAMPION, known=current)
        except RegistryUnavailable as exc:
            if exc.stage == "resolve":
                self.tracking_error = str(exc)
            else:  # the alias was read: the registry answers, the new version did not load
                self.tracking_error, self.refreshed = None, True
            raise
        self.tracking_error, self.refreshed = None, True
        if version is None or fetched is None:
            return False
        predictor = Predictor(self.spec, load_fetched(self.spec, fetched))
        predictor.warm_up()
        with self._lock:
            self.predictor = predictor
            self.state, self.error = "ready", None
        freeze_heap()  # the old model's cycles are collected, the new one frozen
        release_freed_memory()  # nor the old model's memory
        log.info("%s: champion changed %s → v%s", self.spec.name, current, predictor.version)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.spec.name}-loader", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the loader and wait for it (bounded): a load still under way would otherwise go on
        after shutdown, and loading points MLflow's process-wide tracking URI at this holder's
        store, under whatever else the process does next (another app, a training run)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        delay = max(self.settings.model_load_backoff_s, 0.1)
        while not self._stop.is_set() and self.predictor is None:
            try:
                self.load_now()
            except Exception as exc:
                self.error, self.state = str(exc), "no model"
                log.warning("%s: no model yet (%s); retrying in %.0fs", self.spec.name, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
        interval = self.settings.model_poll_interval_s
        while interval > 0 and not self._stop.wait(interval):
            try:
                self.refresh()
            except Exception as exc:  # keep serving what we have
                log.warning("%s: champion refresh failed: %s", self.spec.name, exc)
