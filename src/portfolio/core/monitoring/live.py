"""Live drift of a running API: a bounded window of the latest requests (``LiveMonitor``) and
the Prometheus collector that reports its drift on ``/metrics`` (``DriftCollector``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from portfolio.core.monitoring.drift import Thresholds, compare_feature, psi
from portfolio.core.monitoring.reference import (
    DriftReference,
    _is_numeric,
    bin_counts,
    load_reference,
    numeric_values,
    reference_cache_path,
)
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ live window
class LiveMonitor:
    """A bounded window of the most recent inputs and scores of a running API.

    ``observe`` is all a request pays: one append of the request's columns (each field's
    values, as the endpoint already holds them), no copy and no statistics; ``evaluate``
    computes the drift scores from the last ``window`` rows when ``/metrics`` is scraped, and
    caches them until new rows arrive. Columns, not records: a batch of 1,000 records needs
    no per-record work here, and the statistics are per field anyway. One window per
    process: with several workers each reports its own share of the traffic."""

    def __init__(self, spec: ServiceSpec, window: int = 1000, thresholds: Thresholds = Thresholds()):
        self.spec = spec
        self.window = window
        self.thresholds = thresholds
        # (each field's values, the scores) per observed request, oldest first; chunks wholly
        # older than the last ``window`` rows are dropped as new ones arrive.
        self._chunks: deque[tuple[Mapping[str, Sequence[Any]], Sequence[float]]] = deque()
        self._rows = 0  # rows held in _chunks (at most window + one request's rows - 1)
        self._seen = 0
        self._lock = threading.Lock()
        self.reference: DriftReference | None = None
        self.reference_version: str | None = None
        self.reference_error: str | None = None
        self._retry_at = 0.0
        self._cache: tuple[tuple[int, str | None], dict[str, Any]] | None = None
        self._background: tuple[DriftReference, pd.DataFrame] | None = None
        self.evaluations = 0  # how often the statistics were computed (scrapes with new data)

    def observe(self, values: Mapping[str, Sequence[Any]], scores: Sequence[float]) -> None:
        """One request's rows: ``values`` maps every field to its values (row order), ``scores``
        holds the model's score of each row. Neither is copied: the caller must not change
        them afterwards."""
        n = len(scores)
        if not n:
            return
        with self._lock:
            self._chunks.append((values, scores))
            self._rows += n
            self._seen += n
            while self._rows - len(self._chunks[0][1]) >= self.window:
                self._rows -= len(self._chunks.popleft()[1])

    def __len__(self) -> int:
        return min(self._rows, self.window)

    def _window(self) -> tuple[dict[str, list[Any]], list[float]]:
        """The last ``window`` rows, as columns (call with the lock held)."""
        skip = self._rows - min(self._rows, self.window)
        chunks = list(self._chunks)
        columns = {
            f.name: list(itertools.chain.from_iterable(v[f.name] for v, _ in chunks))[skip:]
            for f in self.spec.fields
        }
        return columns, list(itertools.chain.from_iterable(s for _, s in chunks))[skip:]

    def needs_reference(self, version: str) -> bool:
        return self.reference_version != version and time.monotonic() >= self._retry_at

    def sync(self, spec: ServiceSpec, settings: Settings, version: str, run_id: str | None) -> None:
        """Load the reference of the served model version (once; retried at most every minute)."""
        try:
            if not reference_cache_path(settings, spec.name, version).exists():
                # Downloaded in a child process (core/fetch.py): an API worker never imports MLflow.
                from portfolio.core.fetch import fetch_reference

                fetch_reference(settings, spec.name, run_id, version)
            ref = load_reference(spec, settings, run_id, version)
        except Exception as exc:
            self.reference_error = str(exc)
            self._retry_at = time.monotonic() + 60.0
            log.warning("%s v%s: drift reference unavailable: %s", spec.name, version, exc)
            return
        self.reference, self.reference_version, self.reference_error = ref, version, None

    def background(self) -> pd.DataFrame | None:
        """The reference's training rows, typed (the background of sampling explanations)."""
        ref = self.reference
        if ref is None:
            return None
        if self._background is None or self._background[0] is not ref:
            self._background = (ref, ref.sample_frame(self.spec))
        return self._background[1]

    def background_for(self, predictor: Any, settings: Settings) -> pd.DataFrame | None:
        """The served version's training rows (loaded once), for explanations that need them."""
        if self.needs_reference(predictor.version):
            self.sync(self.spec, settings, predictor.version, predictor.loaded.run_id)
        return self.background() if self.reference_version == predictor.version else None

    def evaluate(self) -> dict[str, Any]:
        """Drift of the window against the reference (cached until the window changes)."""
        with self._lock:
            key = (self._seen, self.reference_version)
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1]
            columns, listed = self._window()
            scores = np.asarray(listed, dtype=float)
            self.evaluations += 1
        rows = len(scores)
        result: dict[str, Any] = {"rows": rows, "features": {}, "prediction": {}}
        ref = self.reference
        if rows:
            result["prediction"]["mean"] = float(np.nanmean(scores))
            for q in (0.1, 0.5, 0.9):
                result["prediction"][f"q{q}"] = float(np.nanquantile(scores, q))
        if ref is not None and rows:
            pred = ref.data.get("prediction") or {}
            rate = self.spec.strategy.positive_rate(scores, pred.get("threshold"))
            if rate is not None:
                result["prediction"]["positive_rate"] = rate
            if pred:
                result["prediction"]["psi"] = psi(*bin_counts(pred, scores)[1:])
            enough = rows >= self.thresholds.min_rows
            feats = ref.features
            sample = ref.data.get("sample") or {}
            for f in self.spec.fields:
                if f.name not in feats:
                    continue
                col = columns[f.name]
                values: Any = numeric_values(col, f) if _is_numeric(f) else col
                r = compare_feature(
                    f.name,
                    f,
                    feats[f.name],
                    values,
                    sample.get(f.name),
                    self.thresholds,
                    len(self.spec.fields),
                )
                result["features"][f.name] = {
                    "psi": r["psi"],
                    "pvalue": r["pvalue"],
                    "drifted": bool(r["drifted"] and enough),
                }
        with self._lock:
            self._cache = (key, result)
        return result


class DriftCollector:
    """Prometheus collector: evaluates the live window at scrape time."""

    def __init__(self, service: str, monitor: LiveMonitor):
        self.service = service
        self.monitor = monitor

    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def _families(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        return [
            GaugeMetricFamily(
                "portfolio_drift_window_rows", "Records in the drift window", labels=["model_service"]
            ),
            GaugeMetricFamily(
                "portfolio_drift_reference_loaded",
                "1 when the served model's training reference is loaded",
                labels=["model_service"],
            ),
            GaugeMetricFamily(
                "portfolio_feature_drift_psi",
                "PSI of each input feature, window vs training reference",
                labels=["model_service", "feature"],
            ),
            GaugeMetricFamily(
                "portfolio_feature_drift_pvalue",
                "p-value of the feature's drift test (KS numeric, chi-square categorical)",
                labels=["model_service", "feature"],
            ),
            GaugeMetricFamily(
                "portfolio_feature_drifted",
                "1 when the feature drifted (PSI and test thresholds, enough rows)",
                labels=["model_service", "feature"],
            ),
            GaugeMetricFamily(
                "portfolio_drift_detected", "1 when any feature drifted", labels=["model_service"]
            ),
            GaugeMetricFamily(
                "portfolio_prediction_score",
                "Model score in the window (mean, quantiles)",
                labels=["model_service", "stat"],
            ),
            GaugeMetricFamily(
                "portfolio_prediction_positive_rate",
                "Share of positive decisions in the window (classifiers)",
                labels=["model_service"],
            ),
            GaugeMetricFamily(
                "portfolio_prediction_reference_positive_rate",
                "Share of positive decisions on the training rows (classifiers)",
                labels=["model_service"],
            ),
            GaugeMetricFamily(
                "portfolio_prediction_drift_psi",
                "PSI of the model score, window vs training scores",
                labels=["model_service"],
            ),
        ]

    def collect(self) -> Iterator[Any]:
        fams = {f.name: f for f in self._families()}
        s = self.service
        result = self.monitor.evaluate()
        fams["portfolio_drift_window_rows"].add_metric([s], result["rows"])
        fams["portfolio_drift_reference_loaded"].add_metric([s], 1.0 if self.monitor.reference else 0.0)
        any_drift = False
        for name, r in result["features"].items():
            fams["portfolio_feature_drift_psi"].add_metric([s, name], r["psi"])
            fams["portfolio_feature_drift_pvalue"].add_metric([s, name], r["pvalue"])
            fams["portfolio_feature_drifted"].add_metric([s, name], 1.0 if r["drifted"] else 0.0)
            any_drift = any_drift or r["drifted"]
        fams["portfolio_drift_detected"].add_metric([s], 1.0 if any_drift else 0.0)
        pred = result["prediction"]
        for stat in ("mean", "q0.1", "q0.5", "q0.9"):
            if stat in pred:
                fams["portfolio_prediction_score"].add_metric([s, stat], pred[stat])
        if "positive_rate" in pred:
            fams["portfolio_prediction_positive_rate"].add_metric([s], pred["positive_rate"])
        ref_pred = (self.monitor.reference.data.get("prediction") if self.monitor.reference else None) or {}
        if ref_pred.get("positive_rate") is not None:
            fams["portfolio_prediction_reference_positive_rate"].add_metric([s], ref_pred["positive_rate"])
        if "psi" in pred:
            fams["portfolio_prediction_drift_psi"].add_metric([s], pred["psi"])
        return iter(fams.values())
