"""Real infrastructure shared by the deployment integration tests, started once per session:
a PostgreSQL cluster, the MLflow server on it (started through the container entrypoint's `mlflow`
role), and every deployed service trained through that server with reduced settings."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from portfolio.core.processes import bin_path, free_port, start, stop, wait_http
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec
from portfolio.services import SERVICES
from tests.conftest import make_settings
from tests.deploy.infra import (
    COMPOSE,
    DEPLOYED_SERVICES,
    ENTRYPOINT,
    Postgres,
    env_map,
    interpolate,
    load_yaml,
    start_postgres,
    world_readable_tmpdir,
)
from tests.support.helpers import require

# Rows of each raw file the deployed services are trained on.
TRAINING_ROWS = 3000


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_or_explain(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    try:
        wait_http(url, timeout=timeout, proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        raise AssertionError(f"{exc}\n--- {log.name} ---\n{log_tail(log)}") from None


def role_env(role: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the image's entrypoint for ``role``, with this environment's tools on PATH
    and every port on loopback."""
    return {
        "PATH": f"{Path(bin_path('portfolio')).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORTFOLIO_SERVICE": role,
        "PORTFOLIO_HOST": "127.0.0.1",
        **(extra or {}),
    }


def start_role(role: str, log: Path, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``role`` exactly as the container does: deploy/docker/entrypoint.sh run."""
    return start([str(ENTRYPOINT), "run"], env=role_env(role, env), log_file=log, cwd=cwd)


def entrypoint_health(role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command for ``role``."""
    return subprocess.run(
        [str(ENTRYPOINT), "health"],
        env={**os.environ, **role_env(role, env)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@dataclass
class Tracking:
    """`mlflow server` on PostgreSQL, configured only by environment variables (as in compose/k8s)."""

    root: Path
    postgres: Postgres
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def log(self) -> Path:
        return self.root / "mlflow.log"

    def env(self) -> dict[str, str]:
        compose_mlflow = env_map(interpolate(load_yaml(COMPOSE), {})["services"]["mlflow"]["environment"])
        return {
            "MLFLOW_HOST": "127.0.0.1",
            "MLFLOW_PORT": str(self.port),
            "MLFLOW_WORKERS": "1",
            "MLFLOW_BACKEND_STORE_URI": self.postgres.uri,
            "PGPASSWORD": self.postgres.password,
            "MLFLOW_ARTIFACTS_DESTINATION": str(self.artifacts),
            # The very allow-list compose gives the server (checked against Host headers below).
            "MLFLOW_SERVER_ALLOWED_HOSTS": compose_mlflow["MLFLOW_SERVER_ALLOWED_HOSTS"],
        }

    def start(self) -> None:
        self.proc = start_role("mlflow", self.log, self.env(), cwd=self.root)
        wait_or_explain(f"{self.url}/health", self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    root = world_readable_tmpdir("deploy-pg-")
    pg: Postgres | None = None
    try:
        pg = start_postgres(root)
        yield pg
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tracking(postgres: Postgres) -> Iterator[Tracking]:
    root = world_readable_tmpdir("deploy-mlflow-")
    server = Tracking(root=root, postgres=postgres)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def trained(tracking: Tracking, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every deployed service that is registered, trained through the PostgreSQL-backed server
    on the first rows of its raw file (2 CV folds, 50 bootstrap rounds: these tests check
    deployment, not model quality; the full files made this fixture ~4 minutes of the suite)."""
    from portfolio.core.training.train import train_service

    state = tmp_path_factory.mktemp("deploy-train")
    sample_dir = state / "data"
    sample_dir.mkdir()
    settings: Settings = make_settings(
        state, mlflow_tracking_uri=tracking.url, cv_folds=2, bootstrap_rounds=50, data_dir=sample_dir
    )
    versions: dict[str, str] = {}
    for name in DEPLOYED_SERVICES:
        if name in SERVICES:
            data_file = SERVICES[name].data_file
            with (data_dir / data_file).open() as full, (sample_dir / data_file).open("w") as head:
                head.writelines(itertools.islice(full, TRAINING_ROWS + 1))  # the header and the rows
            outcome = train_service(SERVICES[name], settings)
            assert outcome.alias == "champion", outcome.gate
            versions[name] = outcome.version
    return versions


@dataclass
class Restarted:
    """Registry state before and after restarting PostgreSQL and the MLflow server."""

    before: dict[str, dict[str, Any]]
    after: dict[str, dict[str, Any]]
    tables_before: dict[str, Any]
    artifact_files: int
    sqlite_files: list[Path]


def registry_snapshot(url: str) -> dict[str, dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    from portfolio.core import registry

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    out: dict[str, dict[str, Any]] = {}
    for rm in client.search_registered_models():
        champion = client.get_model_version_by_alias(rm.name, registry.CHAMPION)
        run = client.get_run(str(champion.run_id))
        out[rm.name] = {
            "version": champion.version,
            "sha256": champion.tags["sha256"],
            "metrics": dict(run.data.metrics),
            "params": dict(run.data.params),
        }
    return out


@pytest.fixture(scope="session")
def restarted(postgres: Postgres, tracking: Tracking, trained: dict[str, str]) -> Restarted:
    """Everything that holds tracking state is stopped and started again (before any API runs)."""
    from portfolio.core import registry

    before = registry_snapshot(tracking.url)
    tables = {
        "registered_models": sorted(r[0] for r in postgres.query("SELECT name FROM registered_models")),
        "model_versions": postgres.query("SELECT count(*) FROM model_versions")[0][0],
    }
    artifact_files = len(list(tracking.artifacts.rglob(registry.MODEL_FILE)))
    sqlite_files = list(tracking.root.rglob("*.db"))
    tracking.stop()
    postgres.stop()
    postgres.start()
    tracking.start()
    return Restarted(before, registry_snapshot(tracking.url), tables, artifact_files, sqlite_files)


@pytest.fixture(scope="session")
def apis(
    tracking: Tracking,
    restarted: Restarted,
    trained: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """Every trained service's API, started through the image's entrypoint, loading its champion
    from the restarted server into a fresh model cache: {service: base URL}."""
    root = tmp_path_factory.mktemp("deploy-apis")
    procs: dict[str, tuple[subprocess.Popen[bytes], Path, str]] = {}
    try:
        for name in trained:
            port = free_port()
            log = root / f"{name}.log"
            proc = start_role(
                name,
                log,
                {
                    "PORTFOLIO_PORT": str(port),
                    "MLFLOW_TRACKING_URI": tracking.url,
                    "PORTFOLIO_STATE_DIR": str(root / name),
                    "PORTFOLIO_MODEL_POLL_INTERVAL_S": "0",
                },
            )
            procs[name] = (proc, log, f"http://127.0.0.1:{port}")
        for proc, log, url in procs.values():
            wait_or_explain(f"{url}/ready", proc, log)
        yield {name: url for name, (_, _, url) in procs.items()}
    finally:
        for proc, _, _ in procs.values():
            stop(proc)


def require_all_services(trained: dict[str, str]) -> None:
    missing = sorted(set(DEPLOYED_SERVICES) - set(trained))
    require(not missing, f"services not registered yet in portfolio.services: {missing}")


def example_record(spec: ServiceSpec) -> dict[str, Any]:
    """One valid request body for ``spec``: the fields' examples, else the first clean data row."""
    record = {f.name: f.example for f in spec.fields if f.example is not None}
    if all(f.name in record or f.allows_null for f in spec.fields):
        return record
    from portfolio.core.data import read_raw_csv
    from portfolio.core.schema import validate_frame
    from tests.support.helpers import ROOT

    raw = read_raw_csv(ROOT / "data" / "raw" / spec.data_file, nrows=200)
    result = validate_frame(raw, spec.fields)
    first = raw[result.valid_mask].iloc[0]
    return {f.name: None if pd.isna(first.get(f.name)) else first.get(f.name) for f in spec.fields}
