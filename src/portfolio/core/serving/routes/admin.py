"""Administration: ``POST /admin/reload`` (needs an admin key)."""

import logging
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from portfolio.core.serving.context import ServingContext
from portfolio.core.serving.errors import ADMIN_RESPONSES

log = logging.getLogger(__name__)


def router(ctx: ServingContext) -> APIRouter:
    """``POST /admin/reload``.

    Args:
        ctx: The app's serving context.

    Returns:
        The router to include in the app.
    """
    holder = ctx.holder
    api = APIRouter()

    @api.post(
        "/admin/reload", tags=["admin"], dependencies=[Depends(ctx.require_admin)], responses=ADMIN_RESPONSES
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

    return api
