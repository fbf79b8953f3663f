"""Operations: liveness, readiness, what model is served, and the Prometheus metrics."""

import math
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from portfolio.core.serving.context import ServingContext
from portfolio.core.serving.errors import MODEL_RESPONSES


def router(ctx: ServingContext) -> APIRouter:
    """``GET /health``, ``/ready``, ``/model`` and ``/metrics``.

    Args:
        ctx: The app's serving context.

    Returns:
        The router to include in the app.
    """
    spec, holder, metrics, monitor = ctx.spec, ctx.holder, ctx.metrics, ctx.monitor
    api = APIRouter()

    @api.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        """Liveness: the process is up (a model may still be loading)."""
        return {"status": "ok", "service": spec.name}

    @api.get("/ready", tags=["ops"], responses={503: {"description": "no model loaded"}})
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

    @api.get("/model", tags=["model"], dependencies=[Depends(ctx.require_key)], responses=MODEL_RESPONSES)
    async def model_info() -> dict[str, Any]:
        """Name, version, threshold, metrics and input schema of the served model."""
        p = ctx.require_model()
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
            "input_schema": ctx.Record.model_json_schema(),
            # PORTFOLIO_SHADOW: the @challenger version scored beside it (null: none loaded).
            "shadow": None
            if ctx.shadow is None
            else {"challenger_version": ctx.shadow.holder.version, "error": ctx.shadow.holder.error},
        }

    @api.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def prometheus() -> Response:
        p = holder.predictor
        metrics.served(p.version if p else None, p.inference if p else None)
        if p and monitor.needs_reference(p.version):
            await run_in_threadpool(monitor.sync, spec, ctx.settings, p.version, p.loaded.run_id)
        await run_in_threadpool(monitor.evaluate)  # drift statistics off the event loop (cached)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return api
