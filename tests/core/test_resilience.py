"""Faults: tracking server unreachable (retries, then the cached champion, reported as degraded),
and a tampered cache refused while the running model keeps serving."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from portfolio.core import registry
from portfolio.core.processes import free_port
from portfolio.core.serving.api import create_app
from portfolio.core.settings import Settings
from tests.support import synthetic
from tests.support.helpers import wait_ready

GOOD = {"x1": 0.5, "x2": 3, "color": "red", "noise": 0.0}


def test_unreachable_tracking_server_serves_the_cached_champion(synth_trained: Settings) -> None:
    registry.load_champion(synthetic.CLASSIFIER, synth_trained)  # populates the local cache
    dead = synth_trained.model_copy(
        update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}", "model_load_retries": 2}
    )
    start = time.monotonic()
    loaded = registry.load_champion(synthetic.CLASSIFIER, dead)
    assert loaded.source == "cache" and loaded.version == "1"
    assert time.monotonic() - start < 120  # bounded retries
    with TestClient(create_app(synthetic.CLASSIFIER, dead)) as c:
        wait_ready(c, timeout_s=60)
        body = c.get("/ready").json()
        assert body["status"] == "degraded" and "unreachable" in body["detail"]
        assert c.post("/predict", json=GOOD).json()["model_version"] == "1"


def test_no_cache_and_no_server_means_not_ready(tmp_path: Path) -> None:
    from tests.conftest import make_settings

    dead = make_settings(
        tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", model_load_retries=0
    )
    with TestClient(create_app(synthetic.CLASSIFIER, dead)) as c:
        # Wait for the loader's verdict itself ("loading" would be 503 too, without one).
        deadline = time.monotonic() + 60
        while (body := c.get("/ready").json())["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "no model", r.json()
        assert "127.0.0.1" in r.json()["detail"], body  # the reason: the server it could not reach
        assert c.get("/health").status_code == 200


def test_tampered_cache_is_refused_and_reported(synth_trained: Settings) -> None:
    """A running API keeps serving its model while its cached copy is tampered with; loading
    that copy (the tracking server gone) is refused, and a new API reports why it is not ready."""
    loaded = registry.load_champion(synthetic.CLASSIFIER, synth_trained)
    cached = synth_trained.model_cache_dir / "synthclf" / f"v{loaded.version}" / registry.MODEL_FILE
    original = cached.read_bytes()
    dead = synth_trained.model_copy(
        update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}", "model_load_retries": 0}
    )
    with TestClient(create_app(synthetic.CLASSIFIER, synth_trained)) as running:
        wait_ready(running)
        before = running.post("/predict", json=GOOD).json()
        try:
            cached.write_bytes(original[:-10] + b"0123456789")
            with pytest.raises(registry.ModelIntegrityError, match="checksum mismatch"):
                registry.load_champion(synthetic.CLASSIFIER, dead)
            with TestClient(create_app(synthetic.CLASSIFIER, dead)) as fresh:
                deadline = time.monotonic() + 60
                while fresh.get("/ready").json()["status"] == "loading" and time.monotonic() < deadline:
                    time.sleep(0.05)
                r = fresh.get("/ready")
                assert r.status_code == 503 and "checksum mismatch" in r.json()["detail"], r.json()
            # The running API still answers, with the same model and the same scores.
            assert running.get("/ready").json()["status"] == "ready"
            assert running.post("/predict", json=GOOD).json() == before
            r = running.post("/predict/batch", json={"records": [GOOD, GOOD | {"x1": -1.0}]})
            assert r.status_code == 200 and r.json()["predictions"][0] == before
        finally:
            cached.write_bytes(original)
