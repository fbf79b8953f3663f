"""Faults: tracking server unreachable (retries, then the cached champion, reported as degraded),
and a tampered cache refused while the running model keeps serving."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from portfolio.core import registry
from portfolio.core.api import create_app
from portfolio.core.processes import free_port
from portfolio.core.settings import Settings
from tests.core import synthetic
from tests.helpers import wait_ready

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
        time.sleep(0.5)
        assert c.get("/ready").status_code == 503
        assert c.get("/health").status_code == 200


def test_tampered_cache_is_refused_and_reported(synth_trained: Settings) -> None:
    loaded = registry.load_champion(synthetic.CLASSIFIER, synth_trained)
    cached = next(
        (synth_trained.model_cache_dir / "synthclf" / f"v{loaded.version}").rglob(registry.MODEL_FILE)
    )
    original = cached.read_bytes()
    try:
        cached.write_bytes(original[:-10] + b"0123456789")
        dead = synth_trained.model_copy(
            update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}", "model_load_retries": 0}
        )
        with pytest.raises(registry.ModelIntegrityError, match="checksum mismatch"):
            registry.load_champion(synthetic.CLASSIFIER, dead)
    finally:
        cached.write_bytes(original)
