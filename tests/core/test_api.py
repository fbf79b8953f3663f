"""The shared FastAPI app, in-process, on a synthetic service with a real registered model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from portfolio.core.serving.api import create_app
from portfolio.core.settings import Settings
from tests.conftest import make_settings
from tests.support import synthetic
from tests.support.helpers import wait_ready

GOOD = {"x1": 0.5, "x2": 3, "color": "red", "noise": 0.0}


@pytest.fixture(scope="module")
def trained(synth_trained: Settings) -> Settings:
    return synth_trained.model_copy(update={"max_batch_size": 5})


@pytest.fixture(scope="module")
def client(trained: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(synthetic.CLASSIFIER, trained)) as c:
        wait_ready(c)
        yield c


def test_ready_is_503_without_a_model_but_health_is_200(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, model_load_backoff_s=5)
    with TestClient(create_app(synthetic.CLASSIFIER, settings)) as c:
        assert c.get("/health").json()["status"] == "ok"
        r = c.get("/ready")
        assert r.status_code == 503
        r = c.post("/predict", json=GOOD)
        assert r.status_code == 503 and "model not loaded" in r.json()["detail"][0]["reason"]


def test_predict_returns_probability_label_threshold_and_version(client: TestClient) -> None:
    r = client.post("/predict", json=GOOD, headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200
    body = r.json()
    assert 0 <= body["probability"] <= 1
    assert body["prediction"] == int(body["probability"] >= body["threshold"])
    assert body["model_version"] == "1"
    assert r.headers["x-request-id"] == "abc-123"


def test_nullable_field_may_be_null(client: TestClient) -> None:
    assert client.post("/predict", json=GOOD | {"x2": None}).status_code == 200


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (GOOD | {"x1": 11}, "x1", "less than or equal"),
        (GOOD | {"x1": "abc"}, "x1", "valid number"),
        (GOOD | {"color": "purple"}, "color", "'red'"),
        (GOOD | {"unknown": 1}, "unknown", "unknown field"),
        ({k: v for k, v in GOOD.items() if k != "x1"}, "x1", "required"),
    ],
)
def test_bad_input_is_422_naming_field_and_reason(
    client: TestClient, body: dict[str, object], field: str, reason: str
) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == 422
    items = r.json()["detail"]
    assert any(i["field"] == field and reason in i["reason"] for i in items), items


@pytest.mark.parametrize(
    "raw", [b"", b"{bad json", b"[1,2]", b'{"x1": NaN, "x2": 1, "color": "red", "noise": 0}', b"\xff\xfe"]
)
def test_malformed_bodies_are_422_not_500(client: TestClient, raw: bytes) -> None:
    r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["reason"]


def test_batch_scores_in_order_and_enforces_the_limit(client: TestClient) -> None:
    records = [GOOD | {"x1": x} for x in (-2.0, 0.0, 2.0)]
    r = client.post("/predict/batch", json={"records": records})
    assert r.status_code == 200
    probs = [p["probability"] for p in r.json()["predictions"]]
    assert probs == sorted(probs) and r.json()["count"] == 3
    r = client.post("/predict/batch", json={"records": [GOOD] * 6})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "records"
    r = client.post("/predict/batch", json={"records": [GOOD, GOOD | {"x1": 99}]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "records.1.x1"


def test_oversized_body_is_413(client: TestClient) -> None:
    r = client.post("/predict", content=b" " * 3_000_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"][0]["field"] == "body"


def test_model_endpoint_describes_the_served_model(client: TestClient) -> None:
    body = client.get("/model").json()
    assert body["name"] == "synthclf" and body["version"] == "1"
    assert 0 < body["threshold"] < 1
    assert "test_roc_auc" in body["metrics"]
    assert set(body["input_schema"]["properties"]) == {"x1", "x2", "color", "noise"}


def _predictions_counted(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("portfolio_predictions_total{")
    )


def test_metrics_count_requests_predictions_and_version(client: TestClient) -> None:
    before = _predictions_counted(client.get("/metrics").text)
    client.post("/predict", json=GOOD)
    assert client.post("/predict/batch", json={"records": [GOOD] * 4}).status_code == 200
    text = client.get("/metrics").text
    assert _predictions_counted(text) == before + 5  # every record of a batch counts
    assert 'portfolio_requests_total{handler="/predict",model_service="synthclf",status="200"}' in text
    assert 'portfolio_request_duration_seconds_bucket{handler="/predict",le="0.0005",model_service=' in text
    assert "portfolio_predictions_total{label=" in text
    assert 'portfolio_model_info{inference="compiled",model_service="synthclf",model_version="1"} 1.0' in text


def test_openapi_documents_the_request_bodies(client: TestClient) -> None:
    """/predict parses its body itself (speed); the schema must still say exactly what it takes."""
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]

    def body_schema(path: str) -> dict:  # type: ignore[type-arg]
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        return schemas[ref.rsplit("/", 1)[1]]

    record = body_schema("/predict")
    assert set(record["properties"]) == set(GOOD)
    assert record["additionalProperties"] is False
    batch = body_schema("/predict/batch")
    items = batch["properties"]["records"]["items"]["$ref"]
    assert schemas[items.rsplit("/", 1)[1]] == record
    assert batch["properties"]["records"]["maxItems"] == 5
    errors = doc["paths"]["/predict"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert errors["$ref"].endswith("/ErrorBody")


_OTEL = """
import sys
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from portfolio.core.serving.api import create_app
from tests.conftest import make_settings
from tests.support import synthetic

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # an operator's OpenTelemetry set-up, process-wide
for on in (False, True):
    settings = make_settings(__import__("pathlib").Path(sys.argv[1]) / str(on), opentelemetry=on)
    with TestClient(create_app(synthetic.CLASSIFIER, settings)) as client:
        assert client.get("/health").status_code == 200
    print(on, len(exporter.get_finished_spans()))
    exporter.clear()
"""


def test_fastapi_opentelemetry_only_with_the_setting(tmp_path: Path) -> None:
    """PORTFOLIO_OPENTELEMETRY: off by default (the check cost every request ~9 us), on it traces
    to the process's configured provider (a subprocess: the provider is process-wide)."""
    import subprocess
    import sys

    from tests.support.helpers import ROOT

    done = subprocess.run(
        [sys.executable, "-c", _OTEL, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    spans = dict(line.split() for line in done.stdout.split("\n") if line.strip())
    assert spans["False"] == "0" and int(spans["True"]) > 0, done.stdout
    assert Settings().opentelemetry is False
