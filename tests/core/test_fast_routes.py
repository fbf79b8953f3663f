"""The prediction endpoints' bare ASGI routes (routes/predict.py ``fast_routes``): they answer the
common requests, the FastAPI routes answer every other query, and both give the same answers and
errors (the key check, 422 naming the field, the request id, metrics)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from portfolio.core.serving.api import create_app
from portfolio.core.serving.routes import predict
from portfolio.core.settings import Settings
from tests.support import synthetic
from tests.support.helpers import wait_ready

GOOD = {"x1": 0.5, "x2": 3, "color": "red", "noise": 0.0}


@pytest.fixture(scope="module")
def client(synth_trained: Settings) -> Iterator[TestClient]:
    settings = synth_trained.model_copy(update={"api_keys": "k1"})
    with TestClient(create_app(synthetic.CLASSIFIER, settings), headers={"X-API-Key": "k1"}) as c:
        wait_ready(c)
        yield c


@pytest.fixture
def fast_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the fast routes handled (their handler, wrapped to record the call)."""
    calls: list[str] = []
    handle = predict.FastRoute.handle

    async def recorded(self: predict.FastRoute, scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await handle(self, scope, receive, send)

    monkeypatch.setattr(predict.FastRoute, "handle", recorded)
    return calls


def test_plain_requests_take_the_fast_route_and_answer_as_the_fastapi_route(
    client: TestClient, fast_calls: list[str]
) -> None:
    fast = client.post("/predict", json=GOOD, headers={"X-Request-ID": "f-1"})
    assert fast_calls == ["/predict"]
    # "True" is a boolean to FastAPI but not one of the fast route's plain queries.
    routed = client.post("/predict?explain=True", json=GOOD)
    assert fast_calls == ["/predict"]
    assert fast.status_code == routed.status_code == 200
    assert fast.json() == routed.json()
    assert fast.headers["x-request-id"] == "f-1" and fast.headers["content-type"] == "application/json"
    assert len(routed.headers["x-request-id"]) == 32
    batch = client.post("/predict/batch?explain=false", json={"records": [GOOD, GOOD | {"x1": -1.0}]})
    assert fast_calls == ["/predict", "/predict/batch"]
    assert batch.status_code == 200 and batch.json()["count"] == 2
    assert batch.json()["predictions"][0] == fast.json()


def test_fast_route_errors_have_the_api_shape(client: TestClient, fast_calls: list[str]) -> None:
    bad = client.post("/predict", json=GOOD | {"x1": 11})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "x1"
    assert "x-request-id" in bad.headers
    malformed = client.post("/predict/batch", content=b'{"records": [')
    assert malformed.status_code == 422 and malformed.json()["detail"][0]["field"] == "body"
    denied = client.post("/predict", json=GOOD, headers={"X-API-Key": "wrong"})
    assert denied.status_code == 401 and denied.json()["detail"][0]["field"] == "authorization"
    assert fast_calls == ["/predict", "/predict/batch", "/predict"]


def test_other_queries_and_methods_go_to_the_fastapi_routes(
    client: TestClient, fast_calls: list[str]
) -> None:
    r = client.post("/predict?explain=maybe", json=GOOD)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "query.explain"
    assert client.get("/predict").status_code == 405
    assert fast_calls == []
    schema = client.get("/openapi.json").json()
    assert "post" in schema["paths"]["/predict"] and "post" in schema["paths"]["/predict/batch"]


def test_requests_through_the_fast_route_are_counted(client: TestClient) -> None:
    def count() -> float:
        return sum(
            s.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for s in family.samples
            if s.name == "portfolio_requests_total"
            and s.labels.get("handler") == "/predict"
            and s.labels.get("status") == "200"
        )

    before = count()
    assert client.post("/predict", json=GOOD).status_code == 200
    assert count() == before + 1


def test_the_fast_lane_skips_the_stack_unless_cors_must_see_every_request(synth_trained: Settings) -> None:
    """Plain prediction requests enter by the app's FastLane (its request middleware around the
    fast route); with CORS configured they go through the whole stack, so a browser's
    cross-origin POST gets its CORS headers, still from the fast route."""
    plain = create_app(synthetic.CLASSIFIER, synth_trained)
    assert plain.fast_lane is not None
    assert plain.fast_lane.takes({"type": "http", "path": "/predict", "method": "POST", "query_string": b""})
    assert not plain.fast_lane.takes(
        {"type": "http", "path": "/predict", "method": "GET", "query_string": b""}
    )
    cors = create_app(
        synthetic.CLASSIFIER, synth_trained.model_copy(update={"cors_origins": "https://a.example"})
    )
    assert cors.fast_lane is None
    with TestClient(cors) as c:
        wait_ready(c)
        r = c.post("/predict", json=GOOD, headers={"Origin": "https://a.example"})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "https://a.example"
    assert len(r.headers["x-request-id"]) == 32
