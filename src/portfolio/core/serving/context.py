"""What every route of a service's API shares: the spec and settings, the model holder, metrics
and live monitor, the request models with their fast validators, the access checks, and the one
function that turns validated records into response records."""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic import Field as PydField

from portfolio.core.logs import request_id
from portfolio.core.monitoring.live import DriftCollector, LiveMonitor
from portfolio.core.monitoring.performance import RealizedCollector, latest_path
from portfolio.core.monitoring.predictions import PredictionLog
from portfolio.core.monitoring.shadow import ShadowScorer
from portfolio.core.schema import (
    PlainBatch,
    plain_batch_decoder,
    plain_dict_validators,
    plain_record_decoder,
    request_model,
)
from portfolio.core.serving.errors import AccessDenied, ModelUnavailable
from portfolio.core.serving.inference import ModelHolder, Predictor, as_records
from portfolio.core.serving.metrics import Metrics
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec


class ServingContext:
    """One service's serving state, built once per app and handed to every router.

    Args:
        spec: The service being served.
        settings: Limits, keys and paths.
        holder: The model holder (tests pass one; by default a new one for the registry's champion).
    """

    def __init__(self, spec: ServiceSpec, settings: Settings, holder: ModelHolder | None = None):
        self.spec = spec
        self.settings = settings
        self.holder = holder or ModelHolder(spec, settings)
        self.metrics = Metrics(spec)
        # Rolling window of recent inputs/scores; drift gauges are computed when /metrics is scraped.
        self.monitor = LiveMonitor(spec)
        self.metrics.registry.register(DriftCollector(spec.name, self.monitor))
        self.prediction_log = PredictionLog.from_settings(settings, spec.name, self.metrics.registry)
        # PORTFOLIO_SHADOW: the @challenger scores the same records off the request path.
        self.shadow = (
            ShadowScorer(spec, settings, self.prediction_log, self.metrics.registry)
            if settings.shadow
            else None
        )
        # The latest `portfolio performance` report of the service, served at /metrics.
        self.metrics.registry.register(
            RealizedCollector(spec.name, latest_path(settings.resolved_prediction_log_dir, spec.name))
        )
        self.score_key = spec.strategy.score_column(spec)
        self.Record: type[BaseModel] = request_model(f"{spec.name.title()}Record", spec.fields)
        self.Batch: type[BaseModel] = create_model(  # type: ignore[call-overload]
            f"{spec.name.title()}Batch",
            __config__=ConfigDict(extra="forbid"),
            records=(list[self.Record], PydField(..., min_length=1, max_length=settings.max_batch_size)),  # type: ignore[name-defined]
        )
        # The prediction endpoints validate bodies with the request models' compiled
        # pydantic-core validators themselves (routes/predict.py says why).
        self.record_validator, self.batch_validator = plain_dict_validators(self.Record, self.Batch)
        self._decode_plain_batch = plain_batch_decoder(spec.fields, settings.max_batch_size)
        self._decode_plain_record = plain_record_decoder(spec.fields)
        self._api_keys = _keys(settings.api_keys)
        self._admin_keys = _keys(settings.admin_api_keys)
        self._prediction_counters: dict[str, Any] = {}

    def require_key(self, request: Request) -> None:
        """Prediction endpoints: a key is needed only when PORTFOLIO_API_KEYS is set."""
        if self._api_keys and not _key_matches(_presented_key(request), self._api_keys):
            raise AccessDenied(401, "missing or invalid API key (Authorization: Bearer … or X-API-Key)")

    def require_admin(self, request: Request) -> None:
        """Admin endpoints always need a key from PORTFOLIO_ADMIN_API_KEYS (separate from API keys)."""
        if not self._admin_keys:
            raise AccessDenied(403, "admin endpoints are disabled (PORTFOLIO_ADMIN_API_KEYS is empty)")
        if not _key_matches(_presented_key(request), self._admin_keys):
            raise AccessDenied(401, "missing or invalid admin key")

    def require_model(self) -> Predictor:
        """The served predictor, or ModelUnavailable (503) while none is loaded."""
        p = self.holder.predictor
        if p is None:
            raise ModelUnavailable(self.holder.error or self.holder.state)
        return p

    def parse(self, body: bytes, validator: Any) -> Any:
        """A JSON body through a request model's validator; errors as FastAPI's 422."""
        try:
            return validator.validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None

    def record_values(self, body: bytes) -> dict[str, Sequence[Any]]:
        """One record's body → each field's value (a one-value column): decoded and checked in
        one pass when every value is plainly valid, else by the request model, which also
        converts what it may and names every error."""
        plain = self._decode_plain_record(body)
        if plain is not None:
            return plain.values
        record = self.parse(body, self.record_validator)
        return {f.name: (record.get(f.name),) for f in self.spec.fields}

    def batch_values(self, body: bytes) -> PlainBatch:
        """A batch's size and each field's values: decoded and checked in one pass when every
        value is plainly valid, else by the request models, which also convert what they may
        and name every error."""
        batch = self._decode_plain_batch(body)
        if batch is None:
            records = self.parse(body, self.batch_validator)["records"]
            fields = self.spec.fields
            batch = PlainBatch(len(records), {f.name: [r.get(f.name) for r in records] for f in fields})
        return batch

    def respond(
        self,
        p: Predictor,
        count: int,
        values: Mapping[str, Sequence[Any]],
        explain: bool,
        batch: bool = False,
    ) -> list[dict[str, Any]]:
        """The response records of ``count`` validated records, given as each field's values.

        Args:
            p: The predictor that scores them.
            count: How many records.
            values: Each field's values, in record order.
            explain: Whether per-record explanations are computed (``?explain=``).
            batch: The records came as a batch (the prediction log ids them ``<request id>:<i>``).

        Returns:
            One output dict per record, with the model version (and threshold for classifiers).
        """
        out = p.predict_columns(None, explain, values)
        task = self.spec.strategy
        constants: dict[str, Any] = {"model_version": p.version, **task.constants(p.threshold)}
        tally = task.label_counts(out, count)
        for label, n in tally.items():  # one increment per label, not per record (a batch: 1,000)
            counter = self._prediction_counters.get(label)
            if counter is None:
                counter = self._prediction_counters[label] = self.metrics.predictions.labels(
                    self.spec.name, label
                )
            counter.inc(n)
        self.monitor.observe(values, out[self.score_key].tolist())
        records = as_records(out, constants)
        rid = request_id.get()
        self.prediction_log.submit(rid, p.version, p.inference, values, records, batch)
        if self.shadow is not None:
            self.shadow.submit(rid, p.version, values, count, batch)
        return records


def _keys(raw: str) -> list[bytes]:
    return [k.strip().encode() for k in raw.split(",") if k.strip()]


def _presented_key(request: Request) -> bytes:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip().encode()
    return request.headers.get("x-api-key", "").strip().encode()


def _key_matches(presented: bytes, keys: list[bytes]) -> bool:
    """Constant-time comparison against every key (no early exit that leaks which one matched)."""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(presented, key)
    return ok and bool(presented)
