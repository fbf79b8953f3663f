"""Production tracking backend, for real: PostgreSQL (Debian package, throwaway cluster) as MLflow's
backend store, artifacts outside the server's working directory, models trained through the server;
then PostgreSQL and the MLflow server are both restarted and the champions are served from them."""

from __future__ import annotations

import httpx
import pytest

from portfolio.services import SERVICES
from tests.deploy.conftest import Restarted, Tracking, entrypoint_health, example_record

pytestmark = pytest.mark.integration


def test_registry_on_postgres_survives_restarts_and_serves_the_champion(
    restarted: Restarted, trained: dict[str, str], apis: dict[str, str]
) -> None:
    assert trained, "nothing trained"
    assert {name: str(v["version"]) for name, v in restarted.before.items()} == trained
    # The registry lives in PostgreSQL's tables, the model files in the artifact store.
    assert restarted.tables_before == {"registered_models": sorted(trained), "model_versions": len(trained)}
    assert restarted.artifact_files >= len(trained)
    assert restarted.sqlite_files == [], "no SQLite file may appear next to the server"
    # Nothing lost across the restart: versions, checksums, metrics and params.
    assert restarted.after == restarted.before
    # The APIs started after the restart load each champion from it (fresh cache) and predict.
    for name, url in apis.items():
        ready = httpx.get(f"{url}/ready").json()
        assert ready == {"status": "ready", "service": name, "model_version": trained[name]}
        model = httpx.get(f"{url}/model").json()
        assert model["sha256"] == restarted.before[name]["sha256"] and model["source"] == "registry"
        r = httpx.post(f"{url}/predict", json=example_record(SERVICES[name]), timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == trained[name]


def test_server_is_healthy_and_accepts_only_the_compose_host_names(tracking: Tracking) -> None:
    """MLflow's DNS-rebinding guard with compose's MLFLOW_SERVER_ALLOWED_HOSTS: the APIs' address
    (mlflow:5000) is accepted, a foreign Host header is refused."""
    path = f"{tracking.url}/api/2.0/mlflow/registered-models/search"
    # The image's HEALTHCHECK of the mlflow role passes against it.
    health = entrypoint_health("mlflow", {"MLFLOW_PORT": str(tracking.port)})
    assert health.returncode == 0, health.stderr
    assert httpx.get(path, headers={"Host": "mlflow:5000"}).status_code == 200
    assert httpx.get(path, headers={"Host": "evil.example.com"}).status_code == 403
