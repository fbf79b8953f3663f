"""API keys, admin keys and what the logs may contain."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from portfolio.core.serving.api import create_app
from portfolio.core.settings import Settings
from tests.support import synthetic
from tests.support.helpers import wait_ready

GOOD = {"x1": 0.5, "x2": 3, "color": "red", "noise": 0.0}
SECRET = "s3cret-key-123"
ADMIN = "adm1n-key-456"


@pytest.fixture(scope="module")
def client(synth_trained: Settings) -> Iterator[TestClient]:
    settings = synth_trained.model_copy(update={"api_keys": f"other,{SECRET}", "admin_api_keys": ADMIN})
    with TestClient(create_app(synthetic.CLASSIFIER, settings)) as c:
        wait_ready(c)
        yield c


def test_prediction_endpoints_need_a_key_when_keys_are_set(client: TestClient) -> None:
    r = client.post("/predict", json=GOOD)
    assert r.status_code == 401 and r.json()["detail"][0]["field"] == "authorization"
    assert client.post("/predict", json=GOOD, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        client.post("/predict", json=GOOD, headers={"Authorization": f"Bearer {SECRET}"}).status_code == 200
    )
    assert client.post("/predict", json=GOOD, headers={"X-API-Key": SECRET}).status_code == 200
    assert client.post("/predict/batch", json={"records": [GOOD]}).status_code == 401
    assert client.get("/model").status_code == 401


def test_health_and_ready_stay_open(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200


def test_admin_needs_the_admin_key_not_an_api_key(client: TestClient) -> None:
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"X-API-Key": SECRET}).status_code == 401
    r = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200 and r.json() == {"reloaded": False, "model_version": "1"}


def test_admin_is_disabled_without_admin_keys(synth_trained: Settings) -> None:
    with TestClient(create_app(synthetic.CLASSIFIER, synth_trained)) as c:
        r = c.post("/admin/reload", headers={"X-API-Key": "anything"})
        assert r.status_code == 403 and "disabled" in r.json()["detail"][0]["reason"]
        # Without PORTFOLIO_API_KEYS, prediction is open.
        wait_ready(c)
        assert c.post("/predict", json=GOOD).status_code == 200


def test_keys_and_bodies_never_reach_the_logs(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    from portfolio.core.logs import JsonFormatter

    caplog.set_level(logging.DEBUG)
    client.post("/predict", json=GOOD | {"noise": 0.123456}, headers={"Authorization": f"Bearer {SECRET}"})
    client.post("/predict", json=GOOD, headers={"X-API-Key": "wrong-" + SECRET})
    client.post("/admin/reload", headers={"X-API-Key": ADMIN})
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    # The access log line of each request is there, with what it is for …
    access = [(x["method"], x["path"], x["status"]) for x in lines if x["msg"] == "request"]
    assert access == [("POST", "/predict", 200), ("POST", "/predict", 401), ("POST", "/admin/reload", 200)]
    text = "\n".join(json.dumps(x) for x in lines)
    assert SECRET not in text and ADMIN not in text  # … without keys
    assert "0.123456" not in text  # … and without request bodies
