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
from tests.images.conftest import Deployment, report
from tests.images.engine import LABEL, Engine, crash
from tests.images.stack import Stack, cleanup, compose_stack, third_party_image, wait_for
from tests.support.clients import over_limit_body, post_http_client, post_urllib

pytestmark = pytest.mark.integration
NGINX = "nginxinc/nginx-unprivileged:1.27-alpine"
POSTGRES = "postgres:16-alpine"
# MinIO's image cannot be pulled here and has no Debian package: the production stack runs with
# MLflow's artifacts on its volume instead of the S3 store (PostgreSQL is real). Prometheus's image
# cannot be pulled either (its scraping is tested in tests/integration with Debian's prometheus).
NOT_RUN = ("minio", "minio-init", "prometheus")
# What the stacks' one-shot `train` job trains (the smallest data set; every service trains the same
# way, and the session's deployment trained them all through the image already).
TRAINED_IN_STACK = "plan" if "plan" in SERVICES else next(iter(SERVICES))
TRAIN_FAST = ("-e", "PORTFOLIO_CV_FOLDS=2", "-e", "PORTFOLIO_BOOTSTRAP_ROUNDS=50")


def overrides(images: dict[str, str], production: bool) -> dict[str, Any]:
    """The test's override file: the third-party images in use, fast health probes and champion
    polls (compose.yaml's 15 s / 30 s, for a test that waits on them). The probes come 7x as often,
    so 7x as many failures in a row (21) make a container unhealthy: the same ~45 s of tolerance as
    compose.yaml's 3 x 15 s (on a loaded machine MLflow misses a few 5 s probes, and `run train`
    refuses to start against an unhealthy MLflow)."""
    fast = {"healthcheck": {"interval": "2s", "start_period": "120s", "retries": 21}}
    services: dict[str, Any] = {"nginx": {"image": images[NGINX], **fast}}
    for name in SERVICES:
        services[name] = {**fast, "environment": {"PORTFOLIO_MODEL_POLL_INTERVAL_S": "2"}}
    for name in ("mlflow", "dashboard"):
        services[name] = dict(fast)
    if production:
        services["postgres"] = {"image": images[POSTGRES], "healthcheck": {"interval": "2s", "retries": 25}}
    return {"services": services}


def seed_mlflow_volume(stack: Stack, source: str) -> None:
    """Create the project's ``mlflow-data`` volume (labelled as compose labels its own) holding a
    copy of ``source``, the session MLflow's volume: the stack starts with every champion."""
    volume = f"{stack.project}_mlflow-data"
    labels = {
        "com.docker.compose.project": stack.project,
        "com.docker.compose.volume": "mlflow-data",
        "com.docker.compose.version": "1.29.2",
        LABEL: "",
    }
    argv = ["volume", "create"]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}" if value else key]
    stack.engine(*argv, volume)
    stack.engine(
        "run",
        "--rm",
        "--label",
        LABEL,
        "--network",
        "none",
        "--user",
        "0:0",
        "-v",
        f"{source}:/from:ro",
        "-v",
        f"{volume}:/to",
        stack.engine.base,
        "sh",
        "-c",
        "cp -a /from/. /to/ && chown 10001:10001 /to",  # the MLflow image's uid owns its volume
        timeout=300,
    )


def versions_in_stack(stack: Stack, name: str) -> int:
    """How many versions of ``name`` the stack's MLflow registry holds (its UI port)."""
    from mlflow.tracking import MlflowClient

    url = f"http://127.0.0.1:{stack.env['MLFLOW_UI_PORT']}"
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    return len(client.search_model_versions(f"name='{name}'"))


def train_in_stack(stack: Stack) -> str:
    """The README's one-shot `train` job, for TRAINED_IN_STACK; returns what it printed."""
    return str(
        stack(
            "run", "--rm", *TRAIN_FAST, "train", "portfolio", "train", TRAINED_IN_STACK, timeout=1800
        ).stdout
    )


def wait_ready_through_gateway(stack: Stack, names: tuple[str, ...]) -> None:
    for name in names:
        wait_for(
            lambda name=name: httpx.get(f"{stack.gateway}/{name}/ready", timeout=5).status_code == 200,
            240,
            f"{name} ready through the gateway",
        )


def check_through_gateway(stack: Stack, served: tuple[str, ...]) -> None:
    """The ``served`` APIs predict through the gateway, the others say why they cannot (no champion,
    503); the dashboard and every container are healthy."""
    for name in SERVICES:
        r = httpx.get(f"{stack.gateway}/{name}/ready", timeout=10)
        if name not in served:
            assert r.status_code == 503 and r.json()["detail"], r.text
            continue
        assert r.status_code == 200 and r.json()["status"] == "ready", r.text
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


def stack_for(engine: Engine, images: dict[str, str], production: bool, seed: str = "") -> Iterator[Stack]:
    """A compose project from compose.yaml, up (`up -d nginx`: the gateway and all it depends on),
    its MLflow volume seeded from ``seed`` when given; taken down (containers, network, volumes)."""
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
        if seed:
            seed_mlflow_volume(stack, seed)
        stack("up", "-d", "--no-build", "nginx", timeout=900)
        yield stack
    finally:
        stack.down()
        cleanup(work)


@pytest.fixture(scope="module")
def default_stack(engine: Engine, deployment: Deployment, third_party: dict[str, str]) -> Iterator[Stack]:
    """The default profile, its MLflow starting from the session's registry (every service trained
    through the image), then the `train` job run once more in the stack. The session's containers
    are paused meanwhile (the stacks get the 2 cores; the registry's files are still while copied)."""
    with deployment.paused():
        for stack in stack_for(engine, third_party, production=False, seed=deployment.mlflow_volume):
            wait_ready_through_gateway(stack, tuple(SERVICES))
            before = versions_in_stack(stack, TRAINED_IN_STACK)
            assert train_in_stack(stack).strip()
            assert versions_in_stack(stack, TRAINED_IN_STACK) == before + 1
            yield stack


def test_default_stack_serves_through_the_gateway(default_stack: Stack) -> None:
    check_through_gateway(default_stack, tuple(SERVICES))


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
    engine: Engine, third_party: dict[str, str], default_stack: Stack
) -> None:
    """MLflow on PostgreSQL (the artifacts on MLflow's volume: MinIO cannot run here): the `train`
    job registers a model in PostgreSQL; its API serves it through the gateway, the untrained ones
    say they have no champion."""
    # The default stack is down before this one comes up (the machine has 2 cores).
    default_stack.down()
    for stack in stack_for(engine, third_party, production=True):
        assert train_in_stack(stack).strip()
        wait_ready_through_gateway(stack, (TRAINED_IN_STACK,))
        check_through_gateway(stack, (TRAINED_IN_STACK,))
        registered = stack(
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
        assert registered == [TRAINED_IN_STACK]
