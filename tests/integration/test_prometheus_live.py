"""Prometheus for real: the Prometheus server (Debian package ``prometheus``) runs the deployed
scrape job and alert rules (deploy/prometheus/*, see tests/support/prometheus.py for the only
changes: loopback targets, short intervals, each alert's ``for`` shortened) against a real
`portfolio serve bankchurn` on loopback. Shifted traffic makes FeatureDrift fire; labels that the
model got wrong, fed through the real `portfolio feedback` and `portfolio performance`, make
ModelPerformanceDegraded fire. Both are read from Prometheus's own ``/api/v1/alerts``, after a
quiet phase in which neither fires."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from portfolio.bankchurn.spec import SPEC as BANK
from portfolio.core.monitoring.predictions import read_log
from portfolio.core.processes import bin_path
from portfolio.core.settings import Settings
from tests.core.test_monitoring import bank_shift
from tests.support.helpers import ROOT
from tests.support.live import live_api, state_env
from tests.support.prometheus import LivePrometheus, live_prometheus, wait_for

WAIT_S = 120  # bound of every wait on Prometheus (scrapes every 2 s, rules every 1 s, for: 2s)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame[BANK.feature_names].to_json(orient="records"))


def _active(prom: LivePrometheus, alertname: str) -> list[dict[str, Any]]:
    return [a for a in prom.alerts() if a["labels"]["alertname"] == alertname]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [bin_path("portfolio"), *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_drift_and_performance_alerts_fire_in_a_real_prometheus(
    bank_state: Settings, data_dir: Path, tmp_path: Path
) -> None:
    raw = pd.read_csv(data_dir / BANK.data_file)
    logs = tmp_path / "predictions"
    env = state_env(bank_state, PORTFOLIO_PREDICTION_LOG_DIR=str(logs))
    (tmp_path / "prometheus").mkdir()
    with (
        live_api("bankchurn", env, tmp_path) as api,
        live_prometheus(tmp_path / "prometheus", {"bankchurn": api.url.removeprefix("http://")}) as prom,
        httpx.Client(base_url=api.url, timeout=60) as http,
    ):
        # Quiet phase: 300 rows of the training distribution; the window is scraped, the drift
        # rules evaluated after that, and no drift alert (not even pending) appears.
        r = http.post("/predict/batch", json={"records": _records(raw.sample(300, random_state=5))})
        assert r.status_code == 200, r.text
        wait_for(
            "Prometheus to scrape a drift window of 300 rows",
            lambda: prom.query('portfolio_drift_window_rows{model_service="bankchurn"} == 300'),
            WAIT_S,
        )
        scraped = time.time()
        wait_for(
            "a drift rule evaluation after that scrape",
            lambda: prom.last_evaluation("portfolio-drift"),
            WAIT_S,
            until=lambda t: t > scraped + 1,
        )
        assert _active(prom, "FeatureDrift") == []
        # The target's scrape-time `service` label (deploy/prometheus/prometheus.yml) and the
        # APIs' `model_service` live side by side: nothing was renamed `exported_*`.
        names = prom.api("labels")
        assert {"service", "model_service", "handler"} <= set(names)
        assert not [n for n in names if n.startswith("exported_")], names

        # Shifted traffic: ages +15, balances x1.5, France and Germany swapped.
        shifted = bank_shift(raw[raw["Age"] <= 85].sample(1000, random_state=6))
        answers: dict[str, dict[str, Any]] = {}
        for k in range(4):
            chunk = shifted.iloc[k * 250 : (k + 1) * 250]
            body = {"records": _records(chunk)}
            r = http.post("/predict/batch", json=body, headers={"X-Request-ID": f"s{k}"})
            assert r.status_code == 200, r.text
            answers.update({f"s{k}:{i}": p for i, p in enumerate(r.json()["predictions"])})
        expected = {"Age", "Balance", "Geography"}
        firing = wait_for(
            f"FeatureDrift firing on exactly {sorted(expected)}",
            lambda: prom.firing("FeatureDrift"),
            WAIT_S,
            until=lambda alerts: {a["feature"] for a in alerts} == expected,
        )
        for labels in firing:
            assert labels == {
                "alertname": "FeatureDrift",
                "severity": "warning",
                "model_service": "bankchurn",
                "feature": labels["feature"],
            }
        assert _active(prom, "ModelPerformanceDegraded") == []  # no labels yet, no report

        # Late labels, each the opposite of what the API answered: the model was wrong on all.
        wait_for(
            "the prediction log to hold every answered record",
            lambda: sum(1 for _ in read_log(logs, "bankchurn")),
            60,
            until=lambda n: n == 1300,
        )
        lines = ["request_id,label", *(f"{rid},{1 - p['prediction']}" for rid, p in answers.items())]
        labels_csv = tmp_path / "labels.csv"
        labels_csv.write_text("\n".join(lines) + "\n")
        _cli(env, "feedback", "bankchurn", str(labels_csv))
        out = tmp_path / "performance.json"
        _cli(env, "performance", "bankchurn", "--output", str(out))
        report = json.loads(out.read_text())
        version = report["model_version"]
        assert report["rows"] == 1000 and report["degraded"] is True, report["degraded_reason"]
        assert version == next(iter(answers.values()))["model_version"]
        firing = wait_for(
            "ModelPerformanceDegraded firing",
            lambda: prom.firing("ModelPerformanceDegraded"),
            WAIT_S,
        )
        assert firing == [
            {
                "alertname": "ModelPerformanceDegraded",
                "severity": "warning",
                "model_service": "bankchurn",
                "model_version": version,
            }
        ]
