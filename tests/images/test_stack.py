"""compose.yaml brought up for real from the role images: the default stack and the production one
(MLflow on PostgreSQL), models trained with the documented one-shot `train` job, every request
through the nginx gateway container on 127.0.0.1, including an over-limit body sent by a client
that writes it whole before reading (http.client)."""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from portfolio.core.processes import free_port
from portfolio.services import SERVICES
from tests.deploy.conftest import example_record
from tests.deploy.infra import PRODUCTION_ENV, read_env_file
from tests.images.conftest import report
from tests.images.engine import Engine, crash
from tests.images.stack import Stack, cleanup, compose_stack, third_party_image, wait_for
from tests.support.clients import over_limit_body, post_http_client, post_urllib

pytestmark = pytest.mark.integration
NGINX = "nginxinc/nginx-unprivileged:1.27-alpine"
POSTGRES = "postgres:16-alpine"
# MinIO's image cannot be pulled here and has no Debian package: the production stack runs with
# MLflow's artifacts on its volume instead of the S3 store (PostgreSQL is real).
NOT_RUN = ("minio", "minio-init", "prometheus")


def overrides(images: dict[str, str], production: bool) -> dict[str, Any]:
    """The test's override file: the third-party images in use, fast health probes."""
    fast = {"healthcheck": {"interval": "2s", "start_period": "120s"}}
    services: dict[str, Any] = {"nginx": {"image": images[NGINX], **fast}}
    for name in (*SERVICES, "mlflow", "dashboard"):
        services[name] = dict(fast)
    if production:
        services["postgres"] = {"image": images[POSTGRES], "healthcheck": {"interval": "2s"}}
    return {"services": services}


def bring_up(stack: Stack) -> None:
    """`up -d` the gateway (and so every API, the dashboard and MLflow), train with the one-shot
    job as the README says, then wait until every API answers ready through the gateway."""
    stack("up", "-d", "--no-build", "nginx", timeout=900)
    stack(
        "run",
        "--rm",
        "-e",
        "PORTFOLIO_CV_FOLDS=2",
        "-e",
        "PORTFOLIO_BOOTSTRAP_ROUNDS=50",
        "train",
        timeout=1800,
    )
    for name in SERVICES:
        wait_for(
            lambda name=name: httpx.get(f"{stack.gateway}/{name}/ready", timeout=5).status_code == 200,
            180,
            f"{name} ready through the gateway",
        )


def check_through_gateway(stack: Stack) -> None:
    """Every API predicts through the gateway; the dashboard and every container are healthy."""
    for name in SERVICES:
        ready = httpx.get(f"{stack.gateway}/{name}/ready", timeout=10).json()
        assert ready["status"] == "ready", ready
        r = httpx.post(f"{stack.gateway}/{name}/predict", json=example_record(SERVICES[name]), timeout=30)
        assert r.status_code == 200, r.text
    assert httpx.get(f"{stack.gateway}/dashboard/_stcore/health", timeout=10).text == "ok"
    for service in ("mlflow", *SERVICES, "dashboard", "nginx"):
        cid = stack.container(service)
        wait_for(
            lambda cid=cid: (
                json.loads(stack.engine("inspect", cid).stdout)[0]["State"]["Health"]["Status"] == "healthy"
            ),
            120,
            f"{service} healthy",
        )


@pytest.fixture(scope="module")
def third_party(engine: Engine, images: dict[str, str], request: pytest.FixtureRequest) -> dict[str, str]:
    out = {}
    for official in (NGINX, POSTGRES):
        image, kind = third_party_image(engine, official)
        out[official] = image
        report(request.config, f"[stack] {official}: {image} ({kind})")
    report(request.config, f"[stack] not run here (image cannot be pulled): {', '.join(NOT_RUN)}")
    return out


def stack_for(engine: Engine, images: dict[str, str], production: bool) -> Iterator[Stack]:
    work = Path(tempfile.mkdtemp(prefix="portfolio-stack-"))
    env = {
        "GATEWAY_PORT": str(free_port()),
        "MLFLOW_UI_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(free_port()),
    }
    profiles: tuple[str, ...] = ()
    if production:
        profiles = ("production",)
        # deploy/compose/production.env as the README passes it, but MLflow's artifacts stay on
        # its volume: the S3 store (MinIO) cannot run here.
        env.update(read_env_file(PRODUCTION_ENV))
        env.update(
            {
                "POSTGRES_PASSWORD": secrets.token_hex(12),
                "MLFLOW_ARTIFACTS_DESTINATION": "/var/lib/portfolio/artifacts",
                "MLFLOW_S3_ENDPOINT_URL": "",
            }
        )
    stack = compose_stack(engine, profiles, overrides(images, production), env, work, unavailable=NOT_RUN)
    try:
        bring_up(stack)
        yield stack
    finally:
        stack.down()
        cleanup(work)


@pytest.fixture(scope="module")
def default_stack(engine: Engine, images: dict[str, str], third_party: dict[str, str]) -> Iterator[Stack]:
    yield from stack_for(engine, third_party, production=False)


def test_default_stack_serves_through_the_gateway(default_stack: Stack) -> None:
    check_through_gateway(default_stack)


def test_gateway_gives_clients_that_write_first_a_readable_413(default_stack: Stack) -> None:
    name = next(iter(SERVICES))
    # Over the gateway's own limit (2m): nginx's 413, read by clients still writing 32 MiB.
    for post in (post_urllib, post_http_client):
        status, body = post(default_stack.gateway, f"/{name}/predict/batch", over_limit_body())
        assert status == 413, (post.__name__, body[:200])
        assert json.loads(body)["detail"][0]["field"] == "body"
    # Just over the API's own limit but under the gateway's: the API's 413, relayed.
    for post in (post_urllib, post_http_client):
        status, body = post(default_stack.gateway, f"/{name}/predict/batch", over_limit_body(2_050_000))
        assert status == 413, (post.__name__, body[:200])
        assert json.loads(body)["detail"][0]["reason"].startswith("request body larger than")


def test_killed_api_container_comes_back_through_the_gateway(default_stack: Stack) -> None:
    name = next(iter(SERVICES))
    cid = default_stack.container(name)
    restarts = json.loads(default_stack.engine("inspect", cid).stdout)[0]["RestartCount"]
    crash(default_stack.engine, cid)
    wait_for(
        lambda: json.loads(default_stack.engine("inspect", cid).stdout)[0]["RestartCount"] > restarts,
        60,
        f"{name} restarted by its restart policy",
    )
    wait_for(
        lambda: httpx.get(f"{default_stack.gateway}/{name}/ready", timeout=5).status_code == 200,
        180,
        f"{name} ready again through the gateway",
    )
    wait_for(
        lambda: (
            json.loads(default_stack.engine("inspect", cid).stdout)[0]["State"]["Health"]["Status"]
            == "healthy"
        ),
        120,
        f"{name} healthy again",
    )


def test_production_stack_runs_mlflow_on_postgres(
    engine: Engine, images: dict[str, str], third_party: dict[str, str], default_stack: Stack
) -> None:
    # The default stack is down before this one comes up (the machine has 2 cores).
    default_stack.down()
    for stack in stack_for(engine, third_party, production=True):
        check_through_gateway(stack)
        tables = stack(
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "mlflow",
            "-d",
            "mlflow",
            "-Atc",
            "SELECT name FROM registered_models ORDER BY name",
        ).stdout.split()
        assert tables == sorted(SERVICES)
