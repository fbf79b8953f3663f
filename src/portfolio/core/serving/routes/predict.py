"""Prediction: ``POST /predict`` (one record) and ``POST /predict/batch``.

They are the hot path: they read the body and validate it with the request model's compiled
pydantic-core validator themselves, check the key inline and write JSON with orjson, instead of
FastAPI's dependency/body/response machinery (about half of a request's time in a profile). The
OpenAPI documents the same models (see ``body_schema``).

Each is served twice over one function (``_score_one``, ``_score_batch``): ``fast_routes`` answers a
POST whose query is empty or a plain ``explain=true|false`` as a bare ASGI route placed before
every FastAPI route (no request object, dependency solving or response class: in a profile those
were about a quarter of the API's own time per request); any other query (``explain=no``,
``explain=0&explain=1``, a typo) falls through to the FastAPI route, which parses and validates
it (422 naming ``query.explain``). Errors raised by either take the app's exception handlers, so
the answers are the same.
"""

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from portfolio.core.serving.context import ServingContext
from portfolio.core.serving.errors import PREDICT_RESPONSES, json_bytes, json_response

# `?explain=false` on the prediction endpoints: skip per-record explanations (their fields are
# null). Only TelecomAI has any (top_factors, 20 model rows per customer); elsewhere a no-op.
EXPLAIN_QUERY: Any = Query(
    True,
    description="Per-record explanations where the service gives them (TelecomAI: top_factors). "
    "false: those fields are null and scoring is several times cheaper; other outputs are identical.",
)


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for an endpoint that parses its JSON body itself (the schema is added to the
    components by ``api.document_bodies``)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _score_one(ctx: ServingContext, body: bytes, explain: bool) -> dict[str, Any]:
    """``POST /predict`` after the key check: one record's JSON body → its answer."""
    values = ctx.record_values(body)
    p = ctx.require_model()
    return ctx.respond(p, 1, values, explain)[0]


def _score_batch(ctx: ServingContext, body: bytes, explain: bool) -> dict[str, Any]:
    """``POST /predict/batch`` after the key check: the predictions, model version and count."""
    batch = ctx.batch_values(body)
    p = ctx.require_model()
    return {
        "predictions": ctx.respond(p, batch.rows, batch.values, explain, batch=True),
        "model_version": p.version,
        "count": batch.rows,
    }


def router(ctx: ServingContext) -> APIRouter:
    """``POST /predict`` and ``POST /predict/batch``.

    Args:
        ctx: The app's serving context.

    Returns:
        The router to include in the app.
    """
    api = APIRouter()

    @api.post(
        "/predict", tags=["predict"], openapi_extra=body_schema(ctx.Record), responses=PREDICT_RESPONSES
    )
    async def predict(request: Request, explain: bool = EXPLAIN_QUERY) -> Response:
        """Score one record."""
        ctx.require_key(request)
        return json_response(_score_one(ctx, await request.body(), explain))

    @api.post(
        "/predict/batch", tags=["predict"], openapi_extra=body_schema(ctx.Batch), responses=PREDICT_RESPONSES
    )
    async def predict_batch(request: Request, explain: bool = EXPLAIN_QUERY) -> Response:
        """Score up to PORTFOLIO_MAX_BATCH_SIZE records (more: 422 naming `records`)."""
        ctx.require_key(request)
        return json_response(_score_batch(ctx, await request.body(), explain))

    return api


# The queries the fast routes take (anything else goes to the FastAPI routes, which validate it).
_PLAIN_QUERIES = {b"": True, b"explain=true": True, b"explain=false": False}
_JSON_HEADERS = (b"content-type", b"application/json")


class FastRoute(BaseRoute):
    """A prediction endpoint as a bare ASGI route (``fast_routes``).

    Args:
        ctx: The app's serving context.
        path: ``/predict`` or ``/predict/batch``.
        score: ``_score_one`` or ``_score_batch``.
    """

    def __init__(self, ctx: ServingContext, path: str, score: Any):
        self.ctx = ctx
        self.path = self.path_format = path
        self.score = score

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if (
            scope["type"] == "http"
            and scope["path"] == self.path
            and scope["method"] == "POST"
            and scope.get("query_string", b"") in _PLAIN_QUERIES
        ):
            return Match.FULL, {}
        return Match.NONE, {}  # other methods and queries: the FastAPI route (405, 422, …)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = self.ctx
        ctx.require_key(Request(scope))
        explain = _PLAIN_QUERIES[scope.get("query_string", b"")]
        message = await receive()
        body = message.get("body", b"")
        if message.get("more_body", False):  # the body came in parts: read the rest
            parts = [body]
            while message.get("more_body", False):
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                parts.append(message.get("body", b""))
            body = b"".join(parts)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
        data = json_bytes(self.score(ctx, body, explain))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_JSON_HEADERS, (b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})


def fast_routes(ctx: ServingContext) -> list[BaseRoute]:
    """The two prediction endpoints as bare ASGI routes, to be placed before the app's routes.

    Args:
        ctx: The app's serving context.

    Returns:
        The routes for ``/predict`` and ``/predict/batch``.
    """
    return [FastRoute(ctx, "/predict", _score_one), FastRoute(ctx, "/predict/batch", _score_batch)]
