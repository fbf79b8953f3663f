"""Structured JSON logs with a request id: one line per event, machine-readable."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
        }
        for key in (
            "service",
            "method",
            "path",
            "status",
            "duration_ms",
            "model_version",
            "fetch_s",
            "warm_up_s",
        ):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup_logging(level: str = "INFO", json_logs: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    # Python warnings (a library's FutureWarning…) become log records: JSON like every other line.
    logging.captureWarnings(json_logs)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that log per call at DEBUG (numba: every compilation step) stay at WARNING, so
    # PORTFOLIO_LOG_LEVEL=DEBUG shows our own lines.
    for noisy in ("alembic", "mlflow.store.db.utils", "urllib3", "httpx", "numba", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def uvicorn_log_config(level: str = "INFO") -> dict[str, Any]:
    """``logging.config.dictConfig`` for uvicorn's own loggers, in the JSON shape of every other line.

    uvicorn applies its ``log_config`` in each server process before it logs anything, so its
    start-up, shutdown and error lines are JSON too (its default config prints them as text).

    Args:
        level: log level name (PORTFOLIO_LOG_LEVEL).

    Returns:
        A dictConfig mapping for ``uvicorn.Config(log_config=...)``.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "portfolio.core.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }
