"""Prometheus: the APIs' /metrics follow Prometheus's conventions (units in the names, the served
model as an ``_info`` metric, the default process and Python collectors, no label that a scrape
attaches itself), and the alert rules in deploy/prometheus pass `promtool check rules` and their
unit tests (`promtool test rules alerts_test.yml`: every alert has a case where it fires and one
where it does not). The live check, a real Prometheus scraping a real API, is in
tests/integration/test_prometheus_live.py."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from portfolio.core.monitoring.performance import save_latest
from portfolio.core.serving.api import create_app
from portfolio.core.serving.metrics import SCRAPE_LABELS, SERVICE_LABEL
from portfolio.core.settings import Settings
from tests.conftest import make_settings
from tests.support import synthetic
from tests.support.helpers import ROOT, ensure_apt, wait_ready

PROM = ROOT / "deploy" / "prometheus"
ALERTS = PROM / "alerts.yml"
ALERT_TESTS = PROM / "alerts_test.yml"
GOOD = {"x1": 0.5, "x2": 3, "color": "red", "noise": 0.0}


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r]


@pytest.fixture(scope="module")
def client(synth_trained: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The synthetic classifier's API with shadow scoring on and a latest performance report in
    its prediction log folder, so that every family /metrics can export has samples."""
    logs = tmp_path_factory.mktemp("prometheus-logs")
    stats = {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}
    report = {
        "service": "synthclf",
        "versions": {"1": {"rows": 50, "degraded": False, "metrics": {"roc_auc": stats}}},
    }
    save_latest(report, logs)
    with TestClient(
        create_app(
            synthetic.CLASSIFIER,
            synth_trained.model_copy(update={"prediction_log_dir": logs, "shadow": True}),
        )
    ) as c:
        wait_ready(c)
        assert c.post("/predict", json=GOOD).status_code == 200
        assert c.post("/predict/batch", json={"records": [GOOD] * 3}).status_code == 200
        yield c


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


# ------------------------------------------------------------------------------- conventions
def test_metrics_follow_prometheus_naming(client: TestClient) -> None:
    fams = families(client.get("/metrics").text)
    # Request latency: a histogram in seconds, named for what it measures.
    duration = fams["portfolio_request_duration_seconds"]
    assert duration.type == "histogram"
    assert {s.labels["handler"] for s in duration.samples} >= {"/predict", "/predict/batch"}
    assert not [name for name in fams if "latency" in name]
    # The model's identity: one `_info` series of value 1 with the version and inference path.
    info = fams["portfolio_model_info"]
    assert [(s.labels, s.value) for s in info.samples] == [
        ({SERVICE_LABEL: "synthclf", "model_version": "1", "inference": "compiled"}, 1.0)
    ]
    assert "portfolio_model_version" not in fams
    # The default process and Python collectors.
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"} <= set(fams)
    assert {"python_info", "python_gc_objects_collected"} <= set(fams)
    assert fams["process_resident_memory_bytes"].samples[0].value > 0


def test_no_label_clashes_with_the_labels_a_scrape_attaches(client: TestClient) -> None:
    """A metric label named like a target label (job, instance, a static `service` label, the
    Prometheus Operator's namespace/service/endpoint/pod/container) would be stored as
    ``exported_<name>``; every portfolio series names its service in ``model_service``."""
    fams = families(client.get("/metrics").text)
    portfolio = {name: f for name, f in fams.items() if name.startswith("portfolio_")}
    # Every portfolio family exported samples here (so the label checks below cover them all).
    assert len(portfolio) >= 20 and not [name for name, f in portfolio.items() if not f.samples]
    used = {label for f in fams.values() for s in f.samples for label in s.labels}
    assert not used & SCRAPE_LABELS, used & SCRAPE_LABELS
    for f in portfolio.values():
        assert all(s.labels[SERVICE_LABEL] == "synthclf" for s in f.samples), f.name


def test_model_info_is_absent_while_no_model_is_loaded(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, model_load_backoff_s=5)
    with TestClient(create_app(synthetic.CLASSIFIER, settings)) as c:
        fams = families(c.get("/metrics").text)
    assert [s.value for s in fams["portfolio_model_ready"].samples] == [0.0]
    assert fams["portfolio_model_info"].samples == []


# -------------------------------------------------------------------------------- alert rules
def test_alert_rules_pass_promtool_check() -> None:
    promtool = ensure_apt("promtool", "prometheus")
    r = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in r.stdout


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    spec = yaml.safe_load(ALERT_TESTS.read_text())
    assert spec["rule_files"] == [ALERTS.name]
    cases = [t for group in spec["tests"] for t in group["alert_rule_test"]]
    fires = {t["alertname"] for t in cases if t["exp_alerts"]}
    quiet = {t["alertname"] for t in cases if not t["exp_alerts"]}
    names = {r["alert"] for r in alert_rules()}
    assert fires == names, f"no firing case: {names - fires}; unknown: {fires - names}"
    assert quiet == names, f"no quiet case: {names - quiet}; unknown: {quiet - names}"


def test_alert_rule_unit_tests_pass_promtool() -> None:
    """`promtool test rules`: synthetic series in, exactly the expected alerts (labels and
    rendered annotations) out at each evaluation time."""
    promtool = ensure_apt("promtool", "prometheus")
    r = subprocess.run(
        [promtool, "test", "rules", ALERT_TESTS.name], cwd=PROM, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_alert_rules_only_use_metrics_and_labels_the_api_exports(client: TestClient) -> None:
    fams = families(client.get("/metrics").text)
    exported = set(fams) | {s.name for f in fams.values() for s in f.samples}
    labels = {label for f in fams.values() for s in f.samples for label in s.labels}
    exprs = " ".join(r["expr"] for r in alert_rules())
    used = set(re.findall(r"\bportfolio_[a-z_]+\b", exprs))
    assert used and used <= exported, used - exported
    grouped = {
        label.strip()
        for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", exprs)
        for label in clause.split(",")
    }
    matched = set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", exprs))
    templated = {
        m
        for r in alert_rules()
        for text in r["annotations"].values()
        for m in re.findall(r"\$labels\.(\w+)", text)
    }
    assert SERVICE_LABEL in grouped and grouped | matched | templated <= labels, (
        grouped | matched | templated
    ) - labels
