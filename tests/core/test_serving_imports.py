"""An API worker imports only what serving needs: with its model loaded and warm, and a request
answered, the process has not imported the training- and validation-only libraries (each costs
every worker memory: matplotlib ~26 MB, pandera ~15 MB, measured in issue 33)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from portfolio.core.settings import Settings
from tests.support.live import state_env

# Imported by training, evaluation plots and data validation; never by an API worker.
TRAINING_ONLY = ("matplotlib", "pandera", "portfolio.core.training", "portfolio.cli")

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
    print(json.dumps(sorted(sys.modules)))
"""


def test_a_warm_api_worker_imports_no_training_only_library(bank_state: Settings) -> None:
    env = {**os.environ, **state_env(bank_state, PORTFOLIO_SERVICE="bankchurn")}
    proc = subprocess.run(
        [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "portfolio.core.serving.api" in modules and "numba" in modules  # it really served
    loaded = sorted(m for m in modules for heavy in TRAINING_ONLY if m == heavy or m.startswith(heavy + "."))
    assert not loaded, f"the API worker imported training-only modules: {loaded[:20]}"
