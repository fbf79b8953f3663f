"""Prediction: ``POST /predict`` (one record) and ``POST /predict/batch``.

They are the hot path: they read the body and validate it with the request model's compiled
pydantic-core validator themselves, check the key inline and write JSON with orjson, instead of
FastAPI's dependency/body/response machinery (about half of a request's time in a profile). The
OpenAPI documents the same models (see ``body_schema``).
"""

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from portfolio.core.serving.context import ServingContext
from portfolio.core.serving.errors import PREDICT_RESPONSES, json_response

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


def router(ctx: ServingContext) -> APIRouter:
    """``POST /predict`` and ``POST /predict/batch``.

    Args:
        ctx: The app's serving context.

    Returns:
        The router to include in the app.
    """
    fields = ctx.spec.fields
    api = APIRouter()

    @api.post(
        "/predict", tags=["predict"], openapi_extra=body_schema(ctx.Record), responses=PREDICT_RESPONSES
    )
    async def predict(request: Request, explain: bool = EXPLAIN_QUERY) -> Response:
        """Score one record."""
        ctx.require_key(request)
        record = ctx.parse(await request.body(), ctx.record_validator)
        p = ctx.require_model()
        return json_response(ctx.respond(p, 1, {f.name: (record.get(f.name),) for f in fields}, explain)[0])

    @api.post(
        "/predict/batch", tags=["predict"], openapi_extra=body_schema(ctx.Batch), responses=PREDICT_RESPONSES
    )
    async def predict_batch(request: Request, explain: bool = EXPLAIN_QUERY) -> Response:
        """Score up to PORTFOLIO_MAX_BATCH_SIZE records (more: 422 naming `records`)."""
        ctx.require_key(request)
        batch = ctx.batch_values(await request.body())
        p = ctx.require_model()
        return json_response(
            {
                "predictions": ctx.respond(p, batch.rows, batch.values, explain),
                "model_version": p.version,
                "count": batch.rows,
            }
        )

    return api
