"""``POST /explain``: one record's prediction with additive per-field contributions."""

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from portfolio.core.explain.record import explain_record
from portfolio.core.monitoring.reference import ReferenceUnavailable
from portfolio.core.serving.context import ServingContext
from portfolio.core.serving.errors import PREDICT_RESPONSES


def router(ctx: ServingContext) -> APIRouter:
    """``POST /explain``.

    Args:
        ctx: The app's serving context.

    Returns:
        The router to include in the app.
    """
    Record = ctx.Record
    api = APIRouter()

    @api.post(
        "/explain", tags=["predict"], dependencies=[Depends(ctx.require_key)], responses=PREDICT_RESPONSES
    )
    async def explain(record: Record) -> Any:  # type: ignore[valid-type]
        """The prediction for one record plus per-feature contributions (original field names)
        that add up, with `base_value`, to `output_value`: log-odds (classifiers) or the predicted
        value (regressors). `method` says how they were computed (TreeSHAP or sampling Shapley)."""
        p = ctx.require_model()
        monitor = ctx.monitor
        try:
            background = await run_in_threadpool(monitor.background_for, p, ctx.settings)
            body = await run_in_threadpool(
                explain_record,
                p,
                record.model_dump(),  # type: ignore[attr-defined]
                background,
                monitor.reference_error or "",
            )
        except ReferenceUnavailable as exc:
            return JSONResponse({"detail": [{"field": "", "reason": str(exc)}]}, status_code=503)
        body["model_version"] = p.version
        return body

    return api
