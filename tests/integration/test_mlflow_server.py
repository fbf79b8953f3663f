"""Against real processes: an `mlflow server` on a loopback port, training through it, then a
real uvicorn API (`portfolio serve`) loading the champion from that server's registry, over HTTP."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from portfolio.bankchurn.spec import SPEC
from portfolio.core import registry
from portfolio.core.processes import free_port, mlflow_server_argv, start, stop, wait_http
from portfolio.core.settings import Settings
from portfolio.core.training.train import train_service
from tests.bankchurn.test_bankchurn import RECORD
from tests.bankchurn.test_faults import DIFFERENT_PARAMS, pipeline_probabilities
from tests.conftest import make_settings
from tests.support.helpers import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = start(
        mlflow_server_argv(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", port),
        log_file=root / "mlflow.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=180, proc=proc)
        yield url, root
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def trained_via_server(server: tuple[str, Path]) -> Settings:
    url, root = server
    settings = make_settings(root / "client-state", mlflow_tracking_uri=url, cv_folds=2)
    outcome = train_service(SPEC, settings)
    assert outcome.alias == "champion"
    return settings


def test_training_through_the_server_lands_in_its_registry(
    server: tuple[str, Path], trained_via_server: Settings
) -> None:
    url, root = server
    # Ask the server itself (REST), not our client library.
    r = httpx.get(
        f"{url}/api/2.0/mlflow/registered-models/alias", params={"name": "bankchurn", "alias": "champion"}
    )
    assert r.status_code == 200, r.text
    mv = r.json()["model_version"]
    assert mv["version"] == "1"
    assert {t["key"] for t in mv.get("tags", [])} >= {"sha256"}
    # The artifacts were uploaded through the server, not written by the client to its own disk.
    assert any((root / "artifacts").rglob(registry.MODEL_FILE))
    assert not any(trained_via_server.artifact_root.rglob(registry.MODEL_FILE))


def test_served_api_answers_over_http_from_the_registry(trained_via_server: Settings) -> None:
    port = free_port()
    state = trained_via_server.resolved_state_dir / "api"
    env = {
        "MLFLOW_TRACKING_URI": trained_via_server.tracking_uri,
        "PORTFOLIO_STATE_DIR": str(state),
        "PORTFOLIO_MODEL_POLL_INTERVAL_S": "1",
    }
    proc = start(
        [str(ROOT / ".venv" / "bin" / "portfolio"), "serve", "bankchurn", "--port", str(port)],
        env=env,
        log_file=state.parent / "api.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/ready", timeout=180, proc=proc)
        r = httpx.post(f"{base}/predict", json=RECORD, headers={"X-Request-ID": "it-1"})
        assert r.status_code == 200
        assert r.json()["model_version"] == "1" and r.headers["x-request-id"] == "it-1"
        assert httpx.post(f"{base}/predict", json=RECORD | {"Age": 7}).status_code == 422
        model = httpx.get(f"{base}/model").json()
        assert model["version"] == "1" and model["source"] == "registry"
        # A deliberately different model, registered through the server: the gate keeps it a
        # challenger, the API keeps answering with v1.
        before = _scores(base, "1")
        train = train_service(SPEC, trained_via_server, params=DIFFERENT_PARAMS)
        assert (train.version, train.alias) == ("2", "challenger")
        assert _scores(base, "1") == before
        # Promote it through the CLI; the running API picks it up without a restart, and its
        # answers become v2's own for the same records.
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "portfolio"), "promote", "bankchurn", "2"],
            env={**os.environ, **env}, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        wait_version(base, "2")
        after = _scores(base, "2")
        assert after == pytest.approx(pipeline_probabilities(trained_via_server, "2", RECORDS), abs=1e-5)
        assert before == pytest.approx(pipeline_probabilities(trained_via_server, "1", RECORDS), abs=1e-5)
        assert max(abs(a - b) for a, b in zip(after, before, strict=True)) > 0.01, (before, after)
    finally:
        stop(proc)
    assert proc.returncode is not None


# Customers unlike each other, so that two different models cannot agree on all of them by chance.
RECORDS = [
    RECORD,
    RECORD | {"Age": 63, "IsActiveMember": 0, "NumOfProducts": 3},
    RECORD | {"Geography": "Germany", "Balance": 120_000.0, "Age": 35, "Tenure": 8},
]


def _scores(base: str, version: str) -> list[float]:
    """RECORDS' probabilities from the API, which must say it answered with ``version``."""
    r = httpx.post(f"{base}/predict/batch", json={"records": RECORDS}, timeout=30)
    assert r.status_code == 200, r.text
    assert {p["model_version"] for p in r.json()["predictions"]} == {version}
    return [p["probability"] for p in r.json()["predictions"]]


def wait_version(base: str, version: str, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{base}/model").json().get("version") == version:
            return
        time.sleep(0.5)
    raise AssertionError(f"API did not switch to v{version}")
