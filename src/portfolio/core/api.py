"""FastAPI app factory shared by every service: /health /ready /model /predict /predict/batch
/metrics. A service contributes only its spec; nothing here is service-specific."""

import hmac
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic import Field as PydField
from starlette.exceptions import HTTPException as StarletteHTTPException

from portfolio.core import registry
from portfolio.core.inference import Predictor, as_records
from portfolio.core.logs import request_id
from portfolio.core.monitoring import DriftCollector, LiveMonitor, ReferenceUnavailable
from portfolio.core.processes import freeze_heap
from portfolio.core.schema import PlainBatch, plain_batch_decoder, plain_dict_validators, request_model
from portfolio.core.settings import Settings, get_settings
from portfolio.core.spec import ServiceSpec

log = logging.getLogger(__name__)


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
        loaded = registry.load_champion(self.spec, self.settings)
        t1 = time.perf_counter()
        predictor = Predictor(self.spec, loaded)
        predictor.warm_up()  # before /ready says ready
        t2 = time.perf_counter()
        with self._lock:
            self.predictor, self.error, self.state = predictor, None, "ready"
        freeze_heap()  # a full collection no longer walks the model (processes.freeze_heap)
        # Where a cold start goes (make images reads these): registry fetch, fast-path build+warm-up.
        log.info(
            "%s v%s loaded (%s)",
            self.spec.name,
            loaded.version,
            loaded.source,
            extra={"fetch_s": round(t1 - t0, 3), "warm_up_s": round(t2 - t1, 3)},
        )
        return predictor

    def refresh(self) -> bool:
        """Swap in the current champion if it changed. True when a new version was loaded."""
        registry.configure(self.settings)
        try:
            mv = registry.champion_version(self.spec.name)
        except Exception as exc:
            self.tracking_error = str(exc)
            raise
        self.tracking_error, self.refreshed = None, True
        current = self.predictor.version if self.predictor else None
        if mv is None or str(mv.version) == current:
            return False
        loaded = registry.load_version(self.spec, self.settings, mv.version)
        predictor = Predictor(self.spec, loaded)
        predictor.warm_up()
        with self._lock:
            self.predictor = predictor
            self.state, self.error = "ready", None
        freeze_heap()  # the old model's cycles are collected, the new one frozen
        log.info("%s: champion changed %s → v%s", self.spec.name, current, loaded.version)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.spec.name}-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

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


class Metrics:
    def __init__(self, spec: ServiceSpec):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "portfolio_requests",
            "HTTP requests",
            ["service", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "portfolio_request_latency_seconds",
            "Request latency",
            ["service", "endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.predictions = Counter(
            "portfolio_predictions",
            "Predictions by class (classification) or count",
            ["service", "label"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "portfolio_model_version",
            "Version of the model being served",
            ["service"],
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "portfolio_model_ready", "1 when a model is loaded", ["service"], registry=self.registry
        )


def _error_items(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic errors → [{"field": "records.3.Age", "reason": "…"}] (our 422 body)."""
    items = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        reason = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            reason = "unknown field"
        elif err.get("type") == "json_invalid":
            reason = "malformed JSON: " + str((err.get("ctx") or {}).get("error", ""))
            loc = []
        elif err.get("type") in ("model_type", "dict_type") and not loc:
            reason = "the body must be a JSON object"
        items.append({"field": ".".join(loc) or "body", "reason": reason})
    return items


class ErrorItem(BaseModel):
    field: str
    reason: str


class ErrorBody(BaseModel):
    """Every error response: which field (``body`` for the whole request) and why."""

    detail: list[ErrorItem]


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for an endpoint that parses its JSON body itself (the schema is added to the
    components by ``_document_bodies``)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Predictions with the model version"},
    401: {"model": ErrorBody, "description": "missing or invalid API key (when keys are configured)"},
    413: {"model": ErrorBody, "description": "request body larger than PORTFOLIO_MAX_BODY_BYTES"},
    422: {"model": ErrorBody, "description": "invalid input: the field and the reason"},
    503: {"model": ErrorBody, "description": "no model loaded yet"},
}
# `?explain=false` on the prediction endpoints: skip per-record explanations (their fields are
# null). Only TelecomAI has any (top_factors, 20 model rows per customer); elsewhere a no-op.
EXPLAIN_QUERY: Any = Query(
    True,
    description="Per-record explanations where the service gives them (TelecomAI: top_factors). "
    "false: those fields are null and scoring is several times cheaper; other outputs are identical.",
)
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    k: v for k, v in PREDICT_RESPONSES.items() if k in (200, 401, 503)
}
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid admin key"},
    403: {"model": ErrorBody, "description": "admin endpoints disabled (no PORTFOLIO_ADMIN_API_KEYS)"},
    502: {"model": ErrorBody, "description": "the registry could not be reached: the model is kept"},
}


def _document_bodies(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Add request models (and their nested definitions) to the generated OpenAPI components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _json(body: Any, status: int = 200) -> Response:
    # orjson: 5-10x faster than json.dumps and native on numpy scalars; NaN/Infinity → null.
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json"
    )


def create_app(
    spec: ServiceSpec, settings: Settings | None = None, holder: ModelHolder | None = None
) -> FastAPI:
    settings = settings or get_settings()
    holder = holder or ModelHolder(spec, settings)
    metrics = Metrics(spec)
    # Rolling window of recent inputs/scores; drift gauges are computed when /metrics is scraped.
    monitor = LiveMonitor(spec)
    metrics.registry.register(DriftCollector(spec.name, monitor))
    score_key = "probability" if spec.task == "classification" else spec.target
    Record = request_model(f"{spec.name.title()}Record", spec.fields)
    Batch = create_model(  # type: ignore[call-overload]
        f"{spec.name.title()}Batch",
        __config__=ConfigDict(extra="forbid"),
        records=(list[Record], PydField(..., min_length=1, max_length=settings.max_batch_size)),  # type: ignore[valid-type]
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder.start()
        yield
        holder.stop()

    app = FastAPI(
        title=f"{spec.title} API",
        description=spec.description,
        version="1",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.monitor = monitor
    if settings.cors_origins.strip():
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[o.strip() for o in settings.cors_origins.split(",") if o.strip()],
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _error_items(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """404/405 and framework body-parsing errors in our error shape (not a bare string)."""
        status, reason = exc.status_code, str(exc.detail)
        field = {400: "body", 404: "path", 405: "method"}.get(status, "")
        cause = exc.__cause__
        if status == 400 and cause is not None:  # FastAPI could not parse the body: same as /predict
            known = {UnicodeDecodeError: "the body is not UTF-8 text", RecursionError: "nested too deeply"}
            status, reason = 422, "malformed JSON: " + known.get(type(cause), type(cause).__name__)
        return JSONResponse({"detail": [{"field": field, "reason": reason}]}, status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": [{"field": "", "reason": "internal error"}]}, status_code=500)

    api_keys = _keys(settings.api_keys)
    admin_keys = _keys(settings.admin_api_keys)

    def require_key(request: Request) -> None:
        """Prediction endpoints: a key is needed only when PORTFOLIO_API_KEYS is set."""
        if api_keys and not _key_matches(_presented_key(request), api_keys):
            raise AccessDenied(401, "missing or invalid API key (Authorization: Bearer … or X-API-Key)")

    def require_admin(request: Request) -> None:
        """Admin endpoints always need a key from PORTFOLIO_ADMIN_API_KEYS (separate from API keys)."""
        if not admin_keys:
            raise AccessDenied(403, "admin endpoints are disabled (PORTFOLIO_ADMIN_API_KEYS is empty)")
        if not _key_matches(_presented_key(request), admin_keys):
            raise AccessDenied(401, "missing or invalid admin key")

    @app.exception_handler(AccessDenied)
    async def on_denied(request: Request, exc: AccessDenied) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(
            {"detail": [{"field": "authorization", "reason": exc.reason}]},
            status_code=exc.status,
            headers=headers,
        )

    def require_model() -> Predictor:
        p = holder.predictor
        if p is None:
            raise ModelUnavailable(holder.error or holder.state)
        return p

    @app.exception_handler(ModelUnavailable)
    async def on_unavailable(request: Request, exc: ModelUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": [{"field": "", "reason": f"model not loaded: {exc}"}]}, status_code=503
        )

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        """Liveness: the process is up (a model may still be loading)."""
        return {"status": "ok", "service": spec.name}

    @app.get("/ready", tags=["ops"], responses={503: {"description": "no model loaded"}})
    async def ready() -> JSONResponse:
        """Readiness: 200 only when a model is loaded."""
        p = holder.predictor
        if p is None:
            return JSONResponse(
                {"status": holder.state, "service": spec.name, "detail": holder.error}, status_code=503
            )
        body: dict[str, Any] = {"status": "ready", "service": spec.name, "model_version": p.version}
        if holder.tracking_error is not None or (p.loaded.source != "registry" and not holder.refreshed):
            body["status"] = "degraded"
            body["detail"] = "tracking server unreachable: serving the cached champion"
        return JSONResponse(body)

    @app.get("/model", tags=["model"], dependencies=[Depends(require_key)], responses=MODEL_RESPONSES)
    async def model_info() -> dict[str, Any]:
        """Name, version, threshold, metrics and input schema of the served model."""
        p = require_model()
        return {
            "name": spec.name,
            "title": spec.title,
            "task": spec.task,
            "version": p.version,
            "source": p.loaded.source,
            "inference": p.inference,
            "threshold": p.threshold,
            "sha256": p.loaded.sha256,
            "metrics": {k: v for k, v in sorted(p.loaded.metrics.items()) if not math.isnan(v)},
            "outputs": p.output_columns,
            "input_schema": Record.model_json_schema(),
        }

    prediction_counters: dict[str, Any] = {}

    def respond(
        p: Predictor, count: int, values: Mapping[str, Sequence[Any]], explain: bool
    ) -> list[dict[str, Any]]:
        """The response records of ``count`` validated records, given as each field's values."""
        out = p.predict_columns(None, explain, values)
        constants: dict[str, Any] = {"model_version": p.version}
        if spec.task == "classification":
            constants["threshold"] = p.threshold
            predictions = out["prediction"]
            if len(predictions) <= 64:  # a request: a loop costs less than np.unique (~1 vs 5 µs)
                tally: dict[str, int] = {}
                for label in map(str, predictions.tolist()):
                    tally[label] = tally.get(label, 0) + 1
            else:
                labels, counts = np.unique(predictions, return_counts=True)
                tally = {str(k): int(n) for k, n in zip(labels.tolist(), counts.tolist(), strict=True)}
        else:
            tally = {"price": count}
        for label, n in tally.items():  # one increment per label, not per record (a batch: 1,000)
            counter = prediction_counters.get(label)
            if counter is None:
                counter = prediction_counters[label] = metrics.predictions.labels(spec.name, label)
            counter.inc(n)
        monitor.observe(values, out[score_key].tolist())
        return as_records(out, constants)

    @app.post(
        "/admin/reload", tags=["admin"], dependencies=[Depends(require_admin)], responses=ADMIN_RESPONSES
    )
    async def admin_reload() -> dict[str, Any]:
        """Load the registry's current champion now (no restart); keeps the old model on failure."""
        try:
            changed = await run_in_threadpool(holder.refresh)
        except Exception as exc:
            log.warning("admin reload failed: %s", exc)
            return JSONResponse(  # type: ignore[return-value]
                {"detail": [{"field": "", "reason": f"reload failed, model kept: {exc}"}]}, status_code=502
            )
        p = holder.predictor
        return {"reloaded": changed, "model_version": p.version if p else None}

    # The two prediction endpoints are the hot path: they read the body and validate it with the
    # request model's compiled pydantic-core validator themselves, check the key inline and write
    # JSON with orjson, instead of FastAPI's dependency/body/response machinery (about half of a
    # request's time in a profile). The OpenAPI documents the same models (see ``_body_schema``).
    record_validator, batch_validator = plain_dict_validators(Record, Batch)

    def parse(body: bytes, validator: Any) -> Any:
        try:
            return validator.validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None

    decode_plain_batch = plain_batch_decoder(spec.fields, settings.max_batch_size)

    def batch_values(body: bytes) -> PlainBatch:
        """A batch's size and each field's values: decoded and checked in one pass when every
        value is plainly valid, else by the request models, which also convert what they may
        and name every error."""
        batch = decode_plain_batch(body)
        if batch is None:
            records = parse(body, batch_validator)["records"]
            batch = PlainBatch(len(records), {f.name: [r.get(f.name) for r in records] for f in spec.fields})
        return batch

    @app.post("/predict", tags=["predict"], openapi_extra=_body_schema(Record), responses=PREDICT_RESPONSES)
    async def predict(request: Request, explain: bool = EXPLAIN_QUERY) -> Response:
        """Score one record."""
        require_key(request)
        record = parse(await request.body(), record_validator)
        p = require_model()
        return _json(respond(p, 1, {f.name: (record.get(f.name),) for f in spec.fields}, explain)[0])

    @app.post(
        "/predict/batch", tags=["predict"], openapi_extra=_body_schema(Batch), responses=PREDICT_RESPONSES
    )
    async def predict_batch(request: Request, explain: bool = EXPLAIN_QUERY) -> Response:
        """Score up to PORTFOLIO_MAX_BATCH_SIZE records (more: 422 naming `records`)."""
        require_key(request)
        batch = batch_values(await request.body())
        p = require_model()
        return _json(
            {
                "predictions": respond(p, batch.rows, batch.values, explain),
                "model_version": p.version,
                "count": batch.rows,
            }
        )

    @app.post("/explain", tags=["predict"], dependencies=[Depends(require_key)], responses=PREDICT_RESPONSES)
    async def explain(record: Record) -> Any:  # type: ignore[valid-type]
        """The prediction for one record plus per-feature contributions (original field names)
        that add up, with `base_value`, to `output_value`: log-odds (classifiers) or the predicted
        value (regressors). `method` says how they were computed (TreeSHAP or sampling Shapley)."""
        p = require_model()
        try:
            body = await run_in_threadpool(monitor.explain, p, settings, record.model_dump())  # type: ignore[attr-defined]
        except ReferenceUnavailable as exc:
            return JSONResponse({"detail": [{"field": "", "reason": str(exc)}]}, status_code=503)
        body["model_version"] = p.version
        return body

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def prometheus() -> Response:
        p = holder.predictor
        metrics.model_ready.labels(spec.name).set(1 if p else 0)
        if p:
            metrics.model_version.labels(spec.name).set(float(p.version))
            if monitor.needs_reference(p.version):
                await run_in_threadpool(monitor.sync, spec, settings, p.version, p.loaded.run_id)
        await run_in_threadpool(monitor.evaluate)  # drift statistics off the event loop (cached)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    _document_bodies(app, [Record, Batch])
    app.add_middleware(
        RequestContextMiddleware, service=spec.name, metrics=metrics, max_body=settings.max_body_bytes
    )
    return app


class ModelUnavailable(RuntimeError):
    pass


class AccessDenied(Exception):
    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason


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


class RequestContextMiddleware:
    """Pure ASGI (cheaper than BaseHTTPMiddleware on the hot path): request id in and out,
    body-size limit, per-endpoint Prometheus counters and latency, one access log line."""

    def __init__(self, app: Any, service: str, metrics: Metrics, max_body: int):
        self.app = app
        self.service = service
        self.metrics = metrics
        self.max_body = max_body
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def _too_large(self, send: Any, rid: str, receive: Any | None) -> None:
        # Clients that write the whole body before reading (http.client, urllib) would get a
        # connection reset instead of the 413 if the socket closed with their body unread: read
        # and discard the rest first, within a bound, then answer.
        if receive is not None:
            await _drain(receive)
        reason = f"request body larger than {self.max_body} bytes"
        await _send_json(send, 413, {"detail": [{"field": "body", "reason": reason}]}, rid)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = request_id.set(rid)
        path = scope.get("path", "")
        start = time.perf_counter()
        status_holder = {"status": 500}
        length = headers.get(b"content-length")
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body:
                status_holder["status"] = 413
                await self._too_large(send, rid, receive)
                return
            received = 0
            too_big = False
            body_left = True

            async def limited_receive() -> dict[str, Any]:
                nonlocal received, too_big, body_left
                message: dict[str, Any] = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    body_left = bool(message.get("more_body", False))
                    if received > self.max_body:
                        too_big = True
                        raise BodyTooLarge()
                return message

            async def send_with_id(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status_holder["status"] = message["status"]
                    message.setdefault("headers", [])
                    message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
                await send(message)

            try:
                await self.app(scope, limited_receive, send_with_id)
            except BodyTooLarge:
                if too_big:
                    status_holder["status"] = 413
                    await self._too_large(send, rid, receive if body_left else None)
        finally:
            elapsed = time.perf_counter() - start
            endpoint = path if path in _KNOWN else "other"
            key = (endpoint, status_holder["status"])
            children = self._children.get(key)
            if children is None:  # label lookups cost more than the update: resolve them once
                children = self._children[key] = (
                    self.metrics.requests.labels(self.service, endpoint, str(key[1])),
                    self.metrics.latency.labels(self.service, endpoint),
                )
            children[0].inc()
            children[1].observe(elapsed)
            if endpoint not in ("/health", "/metrics", "/ready"):
                log.info(
                    "request",
                    extra={
                        "service": self.service,
                        "method": scope.get("method"),
                        "path": path,
                        "status": status_holder["status"],
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )
            request_id.reset(token)


_KNOWN = {
    "/health",
    "/ready",
    "/model",
    "/predict",
    "/predict/batch",
    "/explain",
    "/metrics",
    "/docs",
    "/openapi.json",
}


class BodyTooLarge(Exception):
    pass


# How much of an over-limit body is read and discarded before the 413 (see _too_large): enough for
# any client that merely overshot the limit, bounded so a huge upload cannot hold a worker.
DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_MAX_SECONDS = 10.0


async def _drain(receive: Any) -> None:
    """Read and discard the rest of the request body, up to DRAIN_MAX_BYTES / DRAIN_MAX_SECONDS."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_MAX_SECONDS
    drained = 0
    while drained <= DRAIN_MAX_BYTES:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except TimeoutError:
            return
        if message["type"] != "http.request":
            return  # the client went away
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _send_json(send: Any, status: int, body: dict[str, Any], rid: str) -> None:
    import json

    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"x-request-id", rid.encode("latin-1")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def app_from_env() -> Any:
    """Uvicorn factory for multi-worker serving: the service comes from ``PORTFOLIO_SERVICE``."""
    from portfolio.core.logs import setup_logging
    from portfolio.core.processes import keep_freed_memory
    from portfolio.services import get_spec

    settings = get_settings()
    setup_logging(settings.log_level)
    keep_freed_memory()
    return create_app(get_spec(os.environ.get("PORTFOLIO_SERVICE", "bankchurn")), settings)
