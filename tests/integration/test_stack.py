"""`portfolio up` (`make run`, the README's first command), driven as a user runs it: from a
fresh state on free loopback ports it starts a real MLflow server, trains what has no champion
through it, starts the API, and SIGINT (Ctrl-C) stops every process it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from portfolio.core.processes import bin_path, free_port, port_in_use, wait_http
from tests.bankchurn.test_bankchurn import RECORD
from tests.support.helpers import ROOT

pytestmark = pytest.mark.integration


def test_up_from_a_fresh_state_then_sigint_stops_everything(tmp_path: Path, data_dir: Path) -> None:
    state = tmp_path / "state"
    mlflow_port, api_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},  # up starts its own
        "PORTFOLIO_STATE_DIR": str(state),
        "PORTFOLIO_MODELS_DIR": str(tmp_path / "models"),
        "PORTFOLIO_HOST": "127.0.0.1",
        "PORTFOLIO_MLFLOW_PORT": str(mlflow_port),
        "PORTFOLIO_API_BASE_PORT": str(api_port),
        # A quicker training run than the default (the stack, not the model, is under test).
        "PORTFOLIO_CV_FOLDS": "2",
        "PORTFOLIO_BOOTSTRAP_ROUNDS": "50",
        "COLUMNS": "200",  # the URL table on one line per component
    }
    out = tmp_path / "up.log"
    with out.open("wb") as sink:
        up = subprocess.Popen(
            [bin_path("portfolio"), "up", "--services", "bankchurn"],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    mlflow, api = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{api_port}"
    started: list[psutil.Process] = []
    try:
        wait_http(f"{api}/ready", timeout=900, proc=up)  # after the server start and the training
        deadline = time.monotonic() + 60
        while "is up" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        text = out.read_text()
        assert "is up" in text and mlflow in text and api in text, text
        # Every component answers: the tracking server holds the champion it trained, and the API
        # serves that version from the server's registry.
        assert httpx.get(f"{mlflow}/health", timeout=10).status_code == 200
        r = httpx.get(
            f"{mlflow}/api/2.0/mlflow/registered-models/alias",
            params={"name": "bankchurn", "alias": "champion"},
            timeout=10,
        )
        assert r.status_code == 200 and r.json()["model_version"]["version"] == "1", r.text
        model = httpx.get(f"{api}/model", timeout=10).json()
        assert model["version"] == "1" and model["source"] == "registry", model
        assert httpx.post(f"{api}/predict", json=RECORD, timeout=30).json()["model_version"] == "1"
        assert (state / "mlflow.db").exists()  # the fresh state was created where it was told

        started = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert "mlflow" in names and "serve bankchurn" in names, names
        up.send_signal(signal.SIGINT)  # Ctrl-C
        code = up.wait(timeout=120)
        text = out.read_text()
        assert code == 0, text
        assert "stopped." in text and "Traceback" not in text, text
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
        assert not port_in_use(mlflow_port) and not port_in_use(api_port)
    finally:
        if up.poll() is None:  # the test failed with the stack up: stop it as a user would
            started += psutil.Process(up.pid).children(recursive=True)
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()
        for p in started:  # whatever it left behind (psutil checks it is still the same process)
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
