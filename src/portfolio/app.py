"""The API process's entry point: uvicorn's factory (``portfolio serve``, one per worker). It knows
the list of services, so it lives above the core, which never imports them."""

from __future__ import annotations

import os

from fastapi import FastAPI

from portfolio.core.fastpath.trees import set_numpy_walk_steps
from portfolio.core.logs import setup_logging
from portfolio.core.processes import keep_freed_memory
from portfolio.core.serving.api import create_app
from portfolio.core.settings import get_settings
from portfolio.services import get_spec


def app_from_env() -> FastAPI:
    """Build the app of the service named by ``PORTFOLIO_SERVICE`` (default ``bankchurn``).

    Returns:
        The FastAPI application, configured from the environment's settings.
    """
    settings = get_settings()
    setup_logging(settings.log_level)
    keep_freed_memory()
    set_numpy_walk_steps(settings.numpy_walk_max_steps)
    return create_app(get_spec(os.environ.get("PORTFOLIO_SERVICE", "bankchurn")), settings)
