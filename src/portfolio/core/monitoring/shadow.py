"""Shadow scoring: with ``PORTFOLIO_SHADOW=true`` and a ``@challenger`` registered, an API also
scores every record it answers with the challenger, off the request path, and logs the
challenger's outputs to the prediction log as shadow lines (``"shadow": true``, the same
``request_id``, the challenger's ``model_version``). The caller's answer never depends on it.

- **Off the request path.** A request only appends one item (its validated values, by reference)
  to a bounded queue that wakes nobody (``queueing.RecordQueue``); a background thread takes what
  has queued every 50 ms (at once when the queue is half full), scores it with the challenger in
  calls of up to ``MAX_GROUP_ROWS`` records and hands each request's outputs to the prediction
  log. Without a loaded challenger nothing is queued.
- **Bounded.** At most ``PORTFOLIO_SHADOW_QUEUE`` records wait; a request that does not fit is not
  shadowed and its records are counted in
  ``portfolio_shadow_records_total{outcome="dropped_queue_full"}`` (a warning is logged once),
  beside ``scored``, ``skipped`` (the challenger is the served version) and ``error``.
- **Outputs.** The challenger scores without per-record explanations (TelecomAI's
  ``top_factors`` is null in shadow lines): they enter no metric and cost most of its time.
- **Refresh.** ``ChallengerHolder`` loads the challenger in the background and polls the
  registry every ``PORTFOLIO_MODEL_POLL_INTERVAL_S`` like the champion's ``ModelHolder``: a moved
  alias swaps the new version in atomically, a removed alias stops shadowing, a failed refresh
  keeps the current one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from portfolio.core.fetch import load_fetched, resolve_and_fetch
from portfolio.core.model_cache import CHALLENGER
from portfolio.core.monitoring.predictions import PredictionLog
from portfolio.core.monitoring.queueing import RecordQueue
from portfolio.core.serving.inference import Predictor, as_records
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec

log = logging.getLogger(__name__)

OUTCOMES = ("scored", "skipped", "dropped_queue_full", "error")
# Records scored in one challenger call at most (requests queued meanwhile are grouped).
MAX_GROUP_ROWS = 1024


class ChallengerHolder:
    """The ``@challenger`` a running API shadows, loaded and refreshed in the background.

    Args:
        spec: The service.
        settings: Where the registry is; ``model_poll_interval_s`` is the refresh period.
    """

    def __init__(self, spec: ServiceSpec, settings: Settings):
        self.spec = spec
        self.settings = settings
        self.predictor: Predictor | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def version(self) -> str | None:
        p = self.predictor
        return None if p is None else p.version

    def refresh(self) -> bool:
        """Load the version ``@challenger`` points to if it changed (drop it when the alias is
        gone). True when the held model changed."""
        current = self.version
        # The registry is read in a child process (core/fetch.py), as for the champion.
        version, fetched = resolve_and_fetch(self.settings, self.spec.name, CHALLENGER, known=current)
        if version is None:
            if current is not None:
                log.info("%s: no @challenger any more; shadow scoring stops", self.spec.name)
            self.predictor = None
            return current is not None
        if fetched is None:
            return False
        predictor = Predictor(self.spec, load_fetched(self.spec, fetched))
        # The challenger is scored in groups of up to MAX_GROUP_ROWS: warm that path too.
        predictor.warm_up(batch=True)
        self.predictor = predictor  # one reference swap: the scorer sees the old or the new one
        log.info("%s: shadowing @challenger v%s (was %s)", self.spec.name, predictor.version, current)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.spec.name}-challenger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        backoff = max(self.settings.model_load_backoff_s, 0.1)
        delay = backoff
        while True:
            try:
                self.refresh()
                self.error, delay, wait = None, backoff, self.settings.model_poll_interval_s
            except Exception as exc:  # keep what we have; retry with backoff
                self.error, wait, delay = str(exc), delay, min(delay * 2, 30.0)
                log.warning("%s: challenger refresh failed: %s", self.spec.name, exc)
            if wait <= 0 or self._stop.wait(wait):  # no polling (interval 0) once loaded
                return


class ShadowScorer:
    """Scores answered records with the challenger on a background thread and logs the outputs.

    Args:
        spec: The service.
        settings: ``shadow_queue`` (records waiting at most) and the registry.
        prediction_log: Where the shadow lines go (the API's log).
        registry: Where the shadow counter is registered (the API's /metrics registry).
        holder: The challenger holder (tests pass one; by default one for ``@challenger``).
    """

    def __init__(
        self,
        spec: ServiceSpec,
        settings: Settings,
        prediction_log: PredictionLog,
        registry: CollectorRegistry | None = None,
        holder: ChallengerHolder | None = None,
    ):
        self.spec = spec
        self.holder = holder or ChallengerHolder(spec, settings)
        self.prediction_log = prediction_log
        self._thread: threading.Thread | None = None
        self.records = Counter(
            "portfolio_shadow_records",
            "Answered records by what shadow scoring with the challenger did with them",
            ["model_service", "outcome"],
            registry=registry,
        )
        self._counters = {o: self.records.labels(spec.name, o) for o in OUTCOMES}
        self._queue = RecordQueue(
            settings.shadow_queue, self._counters["dropped_queue_full"], f"{spec.name}: shadow"
        )

    def start(self) -> None:
        """Start loading the challenger and the scoring thread (the API's start-up)."""
        self.holder.start()
        self._thread = threading.Thread(target=self._run, name=f"{self.spec.name}-shadow", daemon=True)
        self._thread.start()

    def submit(
        self,
        request_id: str,
        served_version: str,
        values: Mapping[str, Sequence[Any]],
        count: int,
        batch: bool,
    ) -> None:
        """Queue one answered request (the hot path: a lock, a comparison and a deque append).

        Args:
            request_id: The request's id (the prediction log's id of its records).
            served_version: The version that answered (the challenger is skipped when it is the same).
            values: Each field's validated values, in record order (not modified afterwards).
            count: How many records.
            batch: Whether they came as a batch (ids ``<request id>:<index>``).
        """
        if self.holder.predictor is not None:
            self._queue.offer((request_id, served_version, values, count, batch), count)

    def close(self, timeout: float = 30.0) -> None:
        """Score what is queued, then stop (before the prediction log closes)."""
        self.holder.stop()
        if self._thread is None:
            return
        self._queue.stop()
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            group: list[Any] = []
            rows = 0
            for item, records in self._queue.take():
                group.append(item)
                rows += records
                if rows >= MAX_GROUP_ROWS:
                    self._score_and_release(group, rows)
                    group, rows = [], 0
            if group:
                self._score_and_release(group, rows)
            if self._queue.stopping and self._queue.empty():
                return

    def _score_and_release(self, group: list[tuple[Any, ...]], rows: int) -> None:
        try:
            self._score(group)
        finally:
            self._queue.done(rows)

    def _score(self, group: list[tuple[Any, ...]]) -> None:
        p = self.holder.predictor
        if p is None:
            self._counters["skipped"].inc(sum(g[3] for g in group))
            return
        served = [g for g in group if g[1] != p.version]
        if len(served) < len(group):  # answered by the challenger's version itself
            self._counters["skipped"].inc(sum(g[3] for g in group if g[1] == p.version))
        group = served
        if not group:
            return
        names = self.spec.feature_names
        values = {n: [v for g in group for v in g[2][n]] for n in names}
        try:
            out = p.predict_columns(None, False, values)
            constants: dict[str, Any] = {"model_version": p.version}
            if p.threshold is not None:
                constants["threshold"] = p.threshold
            records = as_records(out, constants)
        except Exception as exc:  # the answers were given already; count and say why
            self._counters["error"].inc(sum(g[3] for g in group))
            log.warning("%s: shadow scoring with v%s failed: %s", self.spec.name, p.version, exc)
            return
        start = 0
        for rid, _, vals, count, batch in group:
            self.prediction_log.submit(
                rid, p.version, p.inference, vals, records[start : start + count], batch, shadow=True
            )
            start += count
        self._counters["scored"].inc(start)
