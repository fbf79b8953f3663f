"""The API of a service: ``create_app`` builds one serving context and includes the routers over
it (routes/: ops, predict, explain, admin), the error handlers and the request middleware. A
service contributes only its spec; nothing here is service-specific."""

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel
from starlette.routing import Match

from portfolio.core.logs import request_id
from portfolio.core.serving.context import ServingContext
from portfolio.core.serving.errors import install_error_handlers
from portfolio.core.serving.inference import ModelHolder
from portfolio.core.serving.metrics import Metrics
from portfolio.core.serving.request_ids import new_request_id
from portfolio.core.serving.routes import admin, explain, ops, predict
from portfolio.core.settings import Settings, get_settings
from portfolio.core.spec import ServiceSpec

log = logging.getLogger(__name__)


def create_app(
    spec: ServiceSpec, settings: Settings | None = None, holder: ModelHolder | None = None
) -> "ServingApp":
    """The service's FastAPI application (the model loads in the background once it starts).

    Args:
        spec: The service to serve.
        settings: Limits, keys, CORS; by default from the environment.
        holder: The model holder (tests pass one); by default one for the registry's champion.

    Returns:
        The application, ready for uvicorn.
    """
    ctx = ServingContext(spec, settings or get_settings(), holder)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The prediction log is written from this loop, not a thread (PredictionLog.attach).
        ctx.prediction_log.attach(asyncio.get_running_loop())
        ctx.holder.start()
        if ctx.shadow is not None:
            ctx.shadow.start()
        yield
        ctx.holder.stop()
        if ctx.shadow is not None:
            ctx.shadow.close()  # what was queued is scored and handed to the log first
        ctx.prediction_log.close()  # SIGTERM/SIGINT: everything answered is written and flushed

    otel = ctx.settings.opentelemetry  # PORTFOLIO_OPENTELEMETRY (settings.py says why it is off)
    app = ServingApp(
        title=f"{spec.title} API",
        description=spec.description,
        version="1",
        lifespan=lifespan,
        telemetry={"tracing": otel, "metrics": otel, "logs": otel},
    )
    app.state.holder = ctx.holder
    app.state.metrics = ctx.metrics
    app.state.monitor = ctx.monitor
    app.state.prediction_log = ctx.prediction_log
    app.state.shadow = ctx.shadow
    cors = bool(ctx.settings.cors_origins.strip())
    if cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[o.strip() for o in ctx.settings.cors_origins.split(",") if o.strip()],
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    install_error_handlers(app)
    for routes in (ops, predict, explain, admin):
        app.include_router(routes.router(ctx))
    # Before every route: the prediction endpoints' common requests skip FastAPI's request
    # handling (routes/predict.py says which and why); the FastAPI routes document them.
    fast = predict.fast_routes(ctx)
    app.router.routes[0:0] = fast
    document_bodies(app, [ctx.Record, ctx.Batch])
    limit = ctx.settings.max_body_bytes
    app.add_middleware(RequestContextMiddleware, service=spec.name, metrics=ctx.metrics, max_body=limit)
    if not cors and not otel:  # both must see every request: then the fast routes stay inside
        app.fast_lane = FastLane(app, fast, spec.name, ctx.metrics, limit)
    return app


class ServingApp(FastAPI):
    """FastAPI with a short way in for the prediction endpoints' plain requests (``FastLane``)."""

    fast_lane: "FastLane | None" = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        lane = self.fast_lane
        if lane is not None and scope["type"] == "http" and lane.takes(scope):
            await lane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class FastLane:
    """``/predict`` and ``/predict/batch`` requests the fast routes take, served by this app's
    own request middleware around the route, without the rest of the ASGI stack: Starlette's
    error and exception middlewares, FastAPI's exit-stack and body-limit layers and the route
    list (in a profile of a BankChurn request, about a sixth of the API's own time; issue 33).
    What a request gets is the same: request id, body limit (413), metrics, access log, and
    errors through the app's own exception handlers (401, 422, 503, 500) in the error shape.

    Args:
        app: The application (its exception handlers answer errors).
        routes: The fast routes (``routes.predict.fast_routes``).
        service: The service's name (metrics and logs).
        metrics: The app's metrics.
        max_body: The body limit in bytes.
    """

    def __init__(self, app: FastAPI, routes: Sequence[Any], service: str, metrics: Metrics, max_body: int):
        self.app = app
        self.routes = {r.path: r for r in routes}
        self.entry = RequestContextMiddleware(
            self._dispatch, service=service, metrics=metrics, max_body=max_body
        )

    def takes(self, scope: Any) -> bool:
        route = self.routes.get(scope["path"])
        return route is not None and route.matches(scope)[0] is Match.FULL

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.entry(scope, receive, send)

    async def _dispatch(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.routes[scope["path"]].handle(scope, receive, send)
        except BodyTooLarge:
            raise  # the request middleware answers 413
        except Exception as exc:
            handlers = self.app.exception_handlers  # install_error_handlers': all async
            handler = next((handlers[k] for k in type(exc).__mro__ if k in handlers), None)
            if handler is None:
                raise
            response = handler(Request(scope, receive), exc)
            if inspect.isawaitable(response):
                response = await response
            await response(scope, receive, send)


def document_bodies(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
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
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or new_request_id()
        token = request_id.set(rid)
        path = scope.get("path", "")
        if log.isEnabledFor(logging.DEBUG) and path not in _UNLOGGED:
            # At DEBUG only (one level check per request otherwise): the id of every request the
            # app began, so that a request that was begun can be told from one never read (the
            # graceful-shutdown test matches these against the answers its clients got).
            log.debug(
                "accepted", extra={"service": self.service, "method": scope.get("method"), "path": path}
            )
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
            if endpoint not in _UNLOGGED and log.isEnabledFor(logging.INFO):  # no dict when off
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


_UNLOGGED = frozenset({"/health", "/metrics", "/ready"})  # probes and scrapes: no access log
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
