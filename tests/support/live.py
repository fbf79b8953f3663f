"""Real trained services and real `portfolio serve` processes for the tests: one training run on
the real data in an isolated state dir, and uvicorn on a free loopback port pointed at it."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import TypeVar

import psutil
import pytest

from portfolio.core.processes import bin_path, free_port, start, stop, wait_http
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec
from portfolio.core.training.train import TrainOutcome
from tests.conftest import make_settings
from tests.support.helpers import ROOT, require


def state_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment that points a `portfolio` subprocess at ``settings``' isolated state."""
    return {
        "PORTFOLIO_STATE_DIR": str(settings.resolved_state_dir),
        "PORTFOLIO_MODELS_DIR": str(settings.resolved_models_dir),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        # mlflow.set_registry_uri (registry.configure) exports MLFLOW_REGISTRY_URI to this
        # process's environment, so a test that configured another state would leak its
        # registry into the subprocess: name this state's registry explicitly.
        "MLFLOW_REGISTRY_URI": settings.tracking_uri,
        "PORTFOLIO_MODEL_POLL_INTERVAL_S": "0",
        "PORTFOLIO_BOOTSTRAP_ROUNDS": str(settings.bootstrap_rounds),
        "PORTFOLIO_LOG_LEVEL": "WARNING",
        "PORTFOLIO_API_KEYS": "",
        "PORTFOLIO_ADMIN_API_KEYS": "",
        **extra,
    }


_WORKER = """
import json, sys, time
from portfolio.core.processes import keep_pyarrow_out
assert keep_pyarrow_out()  # as `portfolio serve` does, first
from fastapi.testclient import TestClient
from portfolio.app import app_from_env
from portfolio.services import get_spec

app = app_from_env()
record = {f.name: f.example for f in get_spec(sys.argv[1]).fields}
with TestClient(app) as client:
    deadline = time.monotonic() + 120
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/ready").text
        time.sleep(0.2)
    for _ in range(3):
        answer = client.post("/predict", json=record)
        assert answer.status_code == 200, answer.text
    assert client.get("/metrics").status_code == 200
    assert app.state.monitor.reference_version == answer.json()["model_version"], "no drift reference"
    while not app.state.holder.refreshed:  # one poll of the champion (every 0.2 s here)
        assert time.monotonic() < deadline, app.state.holder.tracking_error
        time.sleep(0.1)
    print(json.dumps(sorted(sys.modules)))
"""


def warm_worker_modules(settings: Settings, service: str, **extra: str) -> list[str]:
    """The modules an API worker of ``service`` on ``settings``' state (and ``extra`` variables)
    has imported once its model is loaded and warm, ``/predict`` answered, ``/metrics`` scraped
    (the drift reference fetched) and the champion polled once (a fresh process:
    tests/core/test_serving_imports.py)."""
    env = {
        **os.environ,
        **state_env(settings, PORTFOLIO_SERVICE=service, PORTFOLIO_MODEL_POLL_INTERVAL_S="0.2", **extra),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, service], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return modules


@dataclass
class LiveProcess:
    """A server started for a test: its base URL, process and log file."""

    url: str
    proc: Popen[bytes]
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


LiveAPI = LiveProcess

P = TypeVar("P", bound=LiveProcess)


@contextmanager
def running(
    kind: type[P],
    what: str,
    argv: list[str],
    url: str,
    ready: str,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 180,
) -> Iterator[P]:
    """``argv`` as a ``kind`` server at ``url`` once ``url + ready`` answers 200 (fails with the
    log's tail when it does not), until the block ends (SIGTERM, then SIGKILL if it hangs)."""
    proc = start(argv, env=env, log_file=log, cwd=cwd)
    server = kind(url, proc, log)
    try:
        try:
            wait_http(f"{url}{ready}", timeout=timeout, proc=proc)
        except Exception as exc:
            raise AssertionError(f"{what} did not start ({exc}):\n{server.log_tail()}") from None
        if argv[1:2] == ["serve"]:
            assert_no_pyarrow(proc.pid)
        yield server
    finally:
        stop(proc)


def assert_no_pyarrow(pid: int) -> None:
    """`portfolio serve`'s process and its workers have not loaded pyarrow (core/processes.py
    ``keep_pyarrow_out``: 36-40 MB a worker)."""
    server = psutil.Process(pid)
    for p in [server, *server.children(recursive=True)]:
        try:
            command = p.cmdline()
            if "portfolio.core.fetch" in command:
                continue  # the registry reader: a short-lived child with MLflow (core/fetch.py)
            loaded = [m.path for m in p.memory_maps() if "libarrow" in m.path]
        except psutil.NoSuchProcess:
            continue  # a child that has just exited
        assert not loaded, f"API process {p.pid} ({' '.join(command[:4])}) has pyarrow loaded: {loaded[:3]}"


@contextmanager
def live_api(service: str, env: dict[str, str], log_dir: Path, timeout: float = 180) -> Iterator[LiveAPI]:
    """`portfolio serve SERVICE` until the block ends (SIGTERM, then SIGKILL if it hangs)."""
    port = free_port()
    argv = [bin_path("portfolio"), "serve", service, "--host", "127.0.0.1", "--port", str(port)]
    url, log = f"http://127.0.0.1:{port}", log_dir / f"{service}-{port}.log"
    with running(LiveProcess, f"{service} API", argv, url, "/ready", log, env, timeout=timeout) as api:
        yield api


def require_data(spec: ServiceSpec) -> Path:
    """The service's raw CSV (skips locally, fails in CI when it is missing)."""
    path = ROOT / "data" / "raw" / spec.data_file
    require(path.exists(), f"raw data missing: {path.name} (run `make data`)")
    return path


@dataclass
class TrainedService:
    """One real ``train_service`` run on the real data, in its own state dir (own MLflow SQLite
    store, model cache and model card)."""

    spec: ServiceSpec
    settings: Settings
    outcome: TrainOutcome
    seconds: float

    def env(self, **extra: str) -> dict[str, str]:
        """Environment that points a `portfolio` subprocess (or the dashboard) at this state."""
        return state_env(self.settings, **extra)

    def apply_env(self, monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
        """The same, for in-process code (Streamlit AppTest); the service's API-URL variables are
        removed unless given, so a developer's own setting cannot leak into a test."""
        for key, value in self.env(**extra).items():
            monkeypatch.setenv(key, value)
        name = self.spec.name.upper()
        for key in (f"{name}_API_URL", f"PORTFOLIO_{name}_API_URL"):
            if key not in extra:
                monkeypatch.delenv(key, raising=False)


_TRAINED: dict[str, TrainedService] = {}


def train_real(spec: ServiceSpec, tmp_path_factory: pytest.TempPathFactory) -> TrainedService:
    """`train_service(spec)` on the real data, exactly as `portfolio train NAME` runs it; once per
    test run and service (the service's tests and the cross-service ones share the run). Under
    pytest-xdist (`make test`) the first worker that needs it trains it, the other waits for that
    run, and each worker gets its own copy of the trained state (see ``_shared_training``)."""
    if spec.name not in _TRAINED:
        shared = _xdist_shared_dir(tmp_path_factory)
        if shared is None:
            _TRAINED[spec.name] = _train_real(spec, tmp_path_factory.mktemp(f"{spec.name}-state"))
        else:
            _TRAINED[spec.name] = _shared_training(spec, shared, tmp_path_factory)
    return _TRAINED[spec.name]


def _xdist_shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The directory the workers of this pytest-xdist run share (None without xdist): the parent
    of every worker's own base temp dir."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    return tmp_path_factory.getbasetemp().parent / "trained-services"


def _shared_training(
    spec: ServiceSpec, shared: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainedService:
    """One training of ``spec`` for all workers (under a file lock: the pytest-xdist "session
    fixture executed only once" pattern), then a private copy of its state dir for this worker,
    so that whatever a worker's tests write into their state (as they do in a one-process run)
    never reaches the other worker's. The copy's MLflow store names the artifacts of the shared
    run by absolute path: both workers read the same model files."""
    from filelock import FileLock

    shared.mkdir(parents=True, exist_ok=True)
    source, summary = shared / spec.name, shared / f"{spec.name}.pickle"
    with FileLock(str(shared / f"{spec.name}.lock")):
        if not summary.exists():
            trained = _train_real(spec, source)
            summary.write_bytes(pickle.dumps((trained.outcome, trained.seconds)))
    outcome, seconds = pickle.loads(summary.read_bytes())
    state = tmp_path_factory.mktemp(f"{spec.name}-state")
    shutil.copytree(source, state, dirs_exist_ok=True)
    return TrainedService(spec, make_settings(state), outcome, seconds)


def _train_real(spec: ServiceSpec, state: Path) -> TrainedService:
    from portfolio.core.training.train import train_service

    require_data(spec)
    settings = make_settings(state)
    begin = time.monotonic()
    outcome = train_service(spec, settings)
    return TrainedService(spec, settings, outcome, time.monotonic() - begin)
