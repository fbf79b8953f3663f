"""An API worker imports only what serving needs: with its model loaded and warm, a request
answered, /metrics scraped (the drift reference fetched) and the champion polled once, the
process has not imported the training- and validation-only libraries nor the registry's client
(each costs every worker memory, measured in issue 33: matplotlib ~26 MB, pandera ~15 MB, the
MLflow client ~32 MB and with the SQLite store SQLAlchemy and Alembic ~51 MB; core/fetch.py
reads the registry in a child process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from portfolio.core.settings import Settings
from tests.support.live import state_env

# Imported by training, evaluation plots and data validation; never by an API worker.
TRAINING_ONLY = ("matplotlib", "pandera", "portfolio.core.training", "portfolio.cli")
# The registry's client and what it brings; an API worker reads the registry through core/fetch.py.
REGISTRY_CLIENT = ("mlflow", "sqlalchemy", "alembic", "portfolio.core.registry")

WORKER = """
import json, sys, time
from fastapi.testclient import TestClient
from portfolio.app import app_from_env
from portfolio.services import get_spec

app = app_from_env()
record = {f.name: f.example for f in get_spec("bankchurn").fields}
with TestClient(app) as client:
    deadline = time.monotonic() + 120
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/ready").text
        time.sleep(0.2)
    answer = client.post("/predict", json=record)
    assert answer.status_code == 200, answer.text
    assert client.get("/metrics").status_code == 200
    assert app.state.monitor.reference_version == answer.json()["model_version"], "no drift reference"
    while not app.state.holder.refreshed:  # one poll of the champion (every 0.2 s here)
        assert time.monotonic() < deadline, app.state.holder.tracking_error
        time.sleep(0.1)
    print(json.dumps(sorted(sys.modules)))
"""


def test_a_warm_api_worker_imports_no_training_only_library(bank_state: Settings) -> None:
    env = {
        **os.environ,
        **state_env(bank_state, PORTFOLIO_SERVICE="bankchurn", PORTFOLIO_MODEL_POLL_INTERVAL_S="0.2"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "portfolio.core.serving.api" in modules and "xgboost" in modules  # it really served
    # BankChurn's one-row requests are walked in numpy (fastpath/trees.py): numba and its
    # compiler (~110 MB) load only with a worker's first batch.
    assert not [m for m in modules if m.split(".")[0] in ("numba", "llvmlite")], "numba loaded"
    for kind, names in (("training-only", TRAINING_ONLY), ("registry client", REGISTRY_CLIENT)):
        loaded = sorted(m for m in modules for heavy in names if m == heavy or m.startswith(heavy + "."))
        assert not loaded, f"the API worker imported {kind} modules: {loaded[:20]}"
