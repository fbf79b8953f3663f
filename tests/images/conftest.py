"""Session fixtures of the image tests: the Docker engine (started here when it is not running,
stopped at the end), the base image, every role's image built once from the Dockerfile as the
README says, and the roles running as containers on the host network, bound to 127.0.0.1 on free
ports, trained through the image against the MLflow container."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from portfolio.core.processes import free_port
from portfolio.services import SERVICES
from tests.images.engine import (
    LABEL,
    OFFICIAL_BASE,
    Container,
    Engine,
    ensure_base,
    image_name,
    run_role,
    start_engine,
    start_mlflow,
    train_all,
    wait_until,
)
from tests.support.helpers import ROOT, require

pytestmark = pytest.mark.integration


def report(config: pytest.Config, line: str) -> None:
    """Print ``line`` in pytest's output (not captured), e.g. which base image was used."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is None:
        reporter.write_line(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.fixture(scope="package")
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The Docker engine with the base image in place; what it started is removed at the end."""
    require(os.geteuid() == 0, "the image tests start dockerd, which needs root")
    eng = start_engine()
    try:
        eng.base, eng.base_kind = ensure_base(eng)
        why = (
            "" if eng.base == OFFICIAL_BASE else f", made with debootstrap: {OFFICIAL_BASE} cannot be pulled"
        )
        report(request.config, f"[images] base image: {eng.base} ({eng.base_kind}{why})")
        yield eng
    finally:
        ids = eng("ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
        if ids:
            eng("rm", "-f", "-v", *ids, check=False, timeout=120)
        volumes = eng("volume", "ls", "-q", "--filter", f"label={LABEL}", check=False).stdout.split()
        if volumes:
            eng("volume", "rm", "-f", *volumes, check=False)
        eng.stop()


def roles() -> list[str]:
    """Every role an image is built for: each registered service's API, the dashboard, MLflow."""
    return [*SERVICES, "dashboard", "mlflow"]


@pytest.fixture(scope="package")
def images(engine: Engine, request: pytest.FixtureRequest) -> dict[str, str]:
    """Every role's image, built once per run (layers cached across roles and sessions)."""
    from tests.images.engine import build

    # The first build makes the layers every role shares (the venvs); the others only add their
    # role's layers from that cache, two at a time (more would only queue on the 2 cores and disk).
    first, *rest = roles()
    t0 = time.monotonic()
    report(request.config, f"[images] built {image_name(first)} in {build(engine, first):.0f} s")
    with ThreadPoolExecutor(max_workers=2) as pool:
        for role, seconds in zip(rest, pool.map(lambda role: build(engine, role), rest), strict=True):
            report(request.config, f"[images] built {image_name(role)} in {seconds:.0f} s")
    report(request.config, f"[images] every role built in {time.monotonic() - t0:.0f} s")
    return {role: image_name(role) for role in roles()}


@dataclass
class Deployment:
    """The roles running from their images: MLflow, every API, the dashboard."""

    mlflow: Container
    mlflow_volume: str
    apis: dict[str, Container]
    dashboard: Container
    trained: str
    cold_start_s: dict[str, float]

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Every container of the deployment paused (``docker pause``: no CPU, state kept) while the
        block runs, e.g. a compose stack on the same 2 cores; resumed afterwards."""
        containers = (self.mlflow, *self.apis.values(), self.dashboard)
        ids = [c.id for c in containers]
        engine = self.mlflow.engine
        engine("pause", *ids, timeout=60)
        try:
            yield
        finally:
            engine("unpause", *ids, check=False, timeout=60)


@pytest.fixture(scope="package")
def deployment(engine: Engine, images: dict[str, str], request: pytest.FixtureRequest) -> Deployment:
    """MLflow from its image; every service trained through the API image (`portfolio train all`
    in a container, reduced CV/bootstrap); then every API and the dashboard, each ready."""
    require(any((ROOT / "data" / "raw").glob("*.csv")), "raw data missing: run `make data`")
    volume = f"portfolio-test-mlflow-{uuid.uuid4().hex[:8]}"
    mlflow, _ = start_mlflow(engine, volume)
    tracking = {"MLFLOW_TRACKING_URI": mlflow.url}
    trained = train_all(engine, mlflow.url, image_name(next(iter(SERVICES))))
    apis: dict[str, Container] = {}
    cold: dict[str, float] = {}
    for name in SERVICES:
        port = free_port()
        env = {**tracking, "PORTFOLIO_PORT": str(port), "PORTFOLIO_MODEL_POLL_INTERVAL_S": "2"}
        apis[name] = run_role(engine, name, env, port, extra=("--restart", "unless-stopped"))
    for name, container in apis.items():
        cold[name] = wait_until(f"{container.url}/ready", container)
    dport = free_port()
    dashboard = run_role(
        engine,
        "dashboard",
        {"PORTFOLIO_DASHBOARD_PORT": str(dport), "CARVISION_API_URL": apis["carvision"].url}
        if "carvision" in apis
        else {"PORTFOLIO_DASHBOARD_PORT": str(dport)},
        dport,
    )
    cold["dashboard"] = wait_until(f"{dashboard.url}/_stcore/health", dashboard)
    report(
        request.config, f"[images] cold start to /ready (s): { {k: round(v, 1) for k, v in cold.items()} }"
    )
    return Deployment(mlflow, volume, apis, dashboard, trained, cold)
