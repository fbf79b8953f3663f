"""The images for real: built from the Dockerfile as the README says (classic builder), each role
run as documented (read-only root filesystem, /tmp tmpfs, non-root), trained through the image
against the MLflow container, then every API ready and predicting, the dashboard healthy, every
HEALTHCHECK healthy, every log line JSON, the 413 readable by a client that writes before it reads,
and the container-level faults: MLflow stopped and started again, an API container killed."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from portfolio.core import registry
from portfolio.services import SERVICES
from tests.deploy.conftest import example_record
from tests.images.conftest import Deployment
from tests.images.engine import API_ROLES, LABEL, Engine, crash, image_size, wait_healthy, wait_until
from tests.support.clients import over_limit_body, post_http_client, post_urllib

pytestmark = pytest.mark.integration
API_IMAGE_MAX_BYTES = 950 * 1000 * 1000


def modules_present(engine: Engine, image: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` the image's Python can import (found on its path)."""
    code = (
        "import importlib.util, json, sys; "
        "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m)]))"
    )
    out = engine("run", "--rm", "--network", "none", image, "python", "-c", code, *modules, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_each_role_image_carries_only_what_its_role_needs(engine: Engine, images: dict[str, str]) -> None:
    for role in SERVICES:
        image = images[role]
        size = image_size(engine, image)
        assert size <= API_IMAGE_MAX_BYTES, f"{image} is {size / 1e6:.0f} MB"
        assert (
            modules_present(engine, image, ("streamlit", "dvc", "flask", "pytest", "nvidia", "sqlalchemy"))
            == []
        )
        assert modules_present(engine, image, ("portfolio", "xgboost", "sklearn", "uvicorn", "mlflow")) == [
            "portfolio",
            "xgboost",
            "sklearn",
            "uvicorn",
            "mlflow",
        ]
    assert modules_present(engine, images["dashboard"], ("streamlit", "portfolio", "dvc", "pytest")) == [
        "streamlit",
        "portfolio",
    ]
    # The MLflow server's image runs `mlflow server` only: no package, no model libraries.
    assert modules_present(
        engine, images["mlflow"], ("mlflow", "psycopg2", "boto3", "portfolio", "xgboost")
    ) == [
        "mlflow",
        "psycopg2",
        "boto3",
    ]


def test_image_config_keeps_healthcheck_user_and_role(engine: Engine, images: dict[str, str]) -> None:
    for role, image in images.items():
        config = json.loads(engine("image", "inspect", image).stdout)[0]["Config"]
        # Built by the classic builder in Docker's format: the HEALTHCHECK is kept.
        assert config["Healthcheck"]["Test"] == ["CMD", "portfolio-entrypoint", "health"], role
        assert config["User"] == "10001:10001"
        assert f"PORTFOLIO_SERVICE={role}" in config["Env"]


def test_trained_through_the_image_into_the_mlflow_container(deployment: Deployment) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=deployment.mlflow.url, registry_uri=deployment.mlflow.url)
    for name in SERVICES:
        champion = client.get_model_version_by_alias(name, registry.CHAMPION)
        assert champion.tags["sha256"], name
    assert deployment.trained.strip(), "portfolio train printed nothing"


def test_every_api_is_ready_and_predicts(deployment: Deployment) -> None:
    for name, api in deployment.apis.items():
        ready = httpx.get(f"{api.url}/ready", timeout=10).json()
        assert ready["status"] == "ready" and ready["service"] == name, ready
        r = httpx.post(f"{api.url}/predict", json=example_record(SERVICES[name]), timeout=30)
        assert r.status_code == 200, r.text
        assert r.json().get("model_version") == ready["model_version"] or "prediction" in json.dumps(r.json())


def test_dashboard_answers_its_health(deployment: Deployment) -> None:
    r = httpx.get(f"{deployment.dashboard.url}/_stcore/health", timeout=10)
    assert r.status_code == 200 and r.text == "ok"


def test_every_container_runs_read_only_as_non_root_and_turns_healthy(
    engine: Engine, deployment: Deployment
) -> None:
    for container in (deployment.mlflow, *deployment.apis.values(), deployment.dashboard):
        info = container.inspect()
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert "/tmp" in info["HostConfig"]["Tmpfs"]
        assert engine("exec", container.id, "id", "-u").stdout.strip() == "10001"
        denied = engine("exec", container.id, "touch", "/app/x", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr
        wait_healthy(container)


def test_every_log_line_is_json_including_uvicorns_own(deployment: Deployment) -> None:
    for container in (deployment.mlflow, *deployment.apis.values(), deployment.dashboard):
        lines = [line for line in container.logs().splitlines() if line.strip()]
        assert lines, container.role
        for line in lines:
            assert isinstance(json.loads(line), dict), f"{container.role}: {line}"
    api_lines = [json.loads(line) for line in next(iter(deployment.apis.values())).logs().splitlines()]
    messages = " ".join(line["msg"] for line in api_lines)
    assert "Application startup complete" in messages and "Uvicorn running on" in messages


def test_over_limit_body_gets_a_readable_413_from_clients_that_write_first(deployment: Deployment) -> None:
    # 32 MiB, more than the socket buffers hold: the client is still writing when the API answers.
    # Without the API's drain urllib (Connection: close) is reset instead (see tests/support/clients).
    api = next(iter(deployment.apis.values()))
    big = over_limit_body()
    for post in (post_urllib, post_http_client):
        status, body = post(api.url, "/predict/batch", big)
        assert status == 413, (post.__name__, body[:200])
        assert json.loads(body)["detail"][0]["field"] == "body"


def test_mlflow_stopped_then_started_again(engine: Engine, deployment: Deployment) -> None:
    """MLflow down: the APIs answer from the champion they hold and /ready says degraded. MLflow
    back: a champion promoted meanwhile is picked up by the polling APIs."""
    from mlflow.tracking import MlflowClient

    name = "bankchurn" if "bankchurn" in deployment.apis else next(iter(deployment.apis))
    api = deployment.apis[name]
    record = example_record(SERVICES[name])
    before = httpx.get(f"{api.url}/ready", timeout=10).json()["model_version"]
    engine("stop", "-t", "10", deployment.mlflow.id, timeout=60)
    try:
        deadline = time.monotonic() + 120
        body: dict[str, object] = {}
        while time.monotonic() < deadline:
            body = httpx.get(f"{api.url}/ready", timeout=10).json()
            if body["status"] == "degraded":
                break
            time.sleep(1)
        assert body["status"] == "degraded" and body["model_version"] == before, body
        for other in deployment.apis.values():
            r = httpx.post(f"{other.url}/predict", json=example_record(SERVICES[other.role]), timeout=30)
            assert r.status_code == 200, r.text
    finally:
        engine("start", deployment.mlflow.id, timeout=60)
    wait_until(f"{deployment.mlflow.url}/health", deployment.mlflow)
    # A new version of the same model, promoted while the API keeps serving the old one.
    client = MlflowClient(tracking_uri=deployment.mlflow.url, registry_uri=deployment.mlflow.url)
    current = client.get_model_version_by_alias(name, registry.CHAMPION)
    # MLflow 3 sources are `models:/<model id>`; the server wants that id named with the source
    # (the registry's answer leaves ModelVersion.model_id empty).
    model_id = current.model_id or str(current.source).removeprefix("models:/")
    new = client.create_model_version(
        name, str(current.source), run_id=current.run_id, tags=current.tags, model_id=model_id
    )
    client.set_registered_model_alias(name, registry.CHAMPION, new.version)
    deadline = time.monotonic() + 120
    ready: dict[str, object] = {}
    while time.monotonic() < deadline:
        ready = httpx.get(f"{api.url}/ready", timeout=10).json()
        if ready.get("model_version") == str(new.version) and ready["status"] == "ready":
            break
        time.sleep(1)
    assert ready.get("model_version") == str(new.version) and ready["status"] == "ready", ready
    assert httpx.post(f"{api.url}/predict", json=record, timeout=30).status_code == 200


def test_docker_kill_is_a_manual_stop_but_a_crash_is_restarted(engine: Engine) -> None:
    """Why the fault tests kill from the host: `docker kill` counts as a manual stop, which the
    restart policy leaves stopped; a SIGKILL from outside (a crash, the OOM killer) is restarted."""
    argv = ["run", "-d", "--label", LABEL, "--network", "none", "--restart", "unless-stopped"]
    killed = engine(*argv, engine.base, "sleep", "600").stdout.strip()
    crashed = engine(*argv, engine.base, "sleep", "600").stdout.strip()
    try:
        engine("kill", killed)
        crash(engine, crashed)

        def state(cid: str) -> tuple[bool, int]:
            info = json.loads(engine("inspect", cid).stdout)[0]
            return bool(info["State"]["Running"]), int(info["RestartCount"])

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and state(crashed) != (True, 1):
            time.sleep(0.5)
        assert state(crashed) == (True, 1)
        assert state(killed) == (False, 0)
    finally:
        engine("rm", "-f", killed, crashed, check=False)


def test_killed_api_container_is_restarted_healthy(engine: Engine, deployment: Deployment) -> None:
    name = next(r for r in API_ROLES if r in deployment.apis) if set(API_ROLES) & set(deployment.apis) else ""
    api = deployment.apis[name or next(iter(deployment.apis))]
    restarts = api.inspect()["RestartCount"]
    crash(engine, api.id)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and api.inspect()["RestartCount"] == restarts:
        time.sleep(0.5)
    assert api.inspect()["RestartCount"] == restarts + 1
    api.started_at = time.monotonic()
    wait_until(f"{api.url}/ready", api)
    wait_healthy(api)
