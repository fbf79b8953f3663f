"""`logs.setup_logging`: one JSON object per line on stderr, with the request id and our fields."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from portfolio.core.logs import request_id, setup_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """setup_logging changes the process's root logger: put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "numba", "urllib3")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)


def test_json_lines_with_the_request_id_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    log = logging.getLogger("portfolio.test")
    token = request_id.set("rid-123")
    try:
        log.debug("not at INFO")
        log.info("request", extra={"service": "bankchurn", "path": "/predict", "status": 200, "secret": "x"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        request_id.reset(token)
    log.warning("outside a request")
    logging.getLogger("httpx").info("a library's chatter")  # kept at WARNING

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [x["msg"] for x in lines] == ["request", "failed", "outside a request"]
    first = lines[0]
    assert set(first) == {"ts", "level", "logger", "msg", "request_id", "service", "path", "status"}
    assert first["level"] == "INFO" and first["logger"] == "portfolio.test"
    assert first["request_id"] == "rid-123" and first["status"] == 200 and first["path"] == "/predict"
    assert len(first["ts"]) == len("2026-01-01T00:00:00.000Z") and first["ts"].endswith("Z")
    assert lines[1]["level"] == "ERROR" and "ValueError: boom" in lines[1]["exc"]
    assert lines[2]["request_id"] == "-"  # no request: no id


def test_plain_text_for_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("WARNING", json_logs=False)
    logging.getLogger("portfolio.test").info("hidden")
    logging.getLogger("portfolio.test").warning("shown %d", 1)
    assert capsys.readouterr().err == "WARNING portfolio.test: shown 1\n"
    assert len(logging.getLogger().handlers) == 1  # replaced, not added to: one line per event
