"""Late labels and realized performance: `portfolio feedback` joins labels (in each service's raw
target form) to the prediction log and counts what it cannot use; `portfolio performance` reports
metrics equal to those computed from what a real API answered, per model version, beside the
hold-out figures, as JSON, HTML and the API's /metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn import metrics as skm
from typer.testing import CliRunner

from portfolio.bankchurn.spec import SPEC as BANK
from portfolio.carvision.spec import SPEC as CAR
from portfolio.cli import app as cli_app
from portfolio.core import registry
from portfolio.core.monitoring.feedback import (
    FeedbackInputError,
    read_labels,
    read_labels_file,
    record_feedback,
)
from portfolio.core.monitoring.performance import (
    RealizedCollector,
    degraded,
    latest_path,
    performance_report,
    save_latest,
)
from portfolio.core.monitoring.predictions import PredictionLog, read_log
from portfolio.core.serving.api import create_app
from portfolio.core.settings import Settings
from portfolio.plan.spec import SPEC as PLAN
from portfolio.telecom.spec import SPEC as TELECOM
from tests.support import synthetic
from tests.support.helpers import wait_ready
from tests.support.live import live_api, state_env


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("spec", "text", "expected", "invalid"),
    [
        (BANK, "request_id,label\na,1\nb,0\nc,2\nd,\n", {"a": 1, "b": 0}, 2),
        (TELECOM, "request_id,label\na,Yes\nb, No\nc,maybe\nd,1\n", {"a": 1, "b": 0}, 2),
        (PLAN, "request_id,label\na,1\nb,0\nc,yes\n", {"a": 1, "b": 0}, 1),
        (CAR, "request_id,label\na,12500\nb,8000.5\nc,cheap\n,9000\n", {"a": 12500, "b": 8000.5}, 2),
    ],
)
def test_labels_are_parsed_in_the_raw_targets_form(
    spec: Any, text: str, expected: dict[str, float], invalid: int, tmp_path: Path
) -> None:
    rows, counts = read_labels_file(spec, _csv(tmp_path / "l.csv", text))
    assert dict(zip(rows["request_id"], rows["y"], strict=True)) == expected
    assert counts["invalid_rows"] == invalid and sum(counts["invalid_by_reason"].values()) == invalid


def _log(tmp_path: Path, service: str, ids: list[str], version: str = "1") -> None:
    plog = PredictionLog(tmp_path, service)
    for rid in ids:
        plog.submit(
            rid, version, "compiled", {"x": [1]}, [{"probability": 0.7, "threshold": 0.5}], batch=False
        )
    plog.close()


def test_feedback_counts_unknown_duplicate_and_invalid_rows(tmp_path: Path) -> None:
    _log(tmp_path, "bankchurn", ["r1", "r2", "r3"])
    labels = _csv(tmp_path / "l.csv", "request_id,label\nr1,0\nr2,1\nr1,1\nzz,1\nr3,7\n,1\n")
    report = record_feedback(BANK, tmp_path, labels)
    assert report["rows_in_file"] == 6
    assert report["joined"] == 2  # r1 (last: 1), r2
    assert (
        report["duplicate_ids"] == 1 and report["unknown_ids"] == 1 and report["unknown_examples"] == ["zz"]
    )
    assert report["invalid_rows"] == 2 and report["invalid_by_reason"] == {
        "request_id: empty": 1,
        "label: not a usable Exited value": 1,
    }
    assert read_labels(tmp_path, "bankchurn") == {"r1": 1.0, "r2": 1.0}
    record_feedback(BANK, tmp_path, _csv(tmp_path / "m.csv", "request_id,label\nr1,0\n"))
    assert read_labels(tmp_path, "bankchurn")["r1"] == 0.0  # a later file wins too


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "file not found"),
        ("", "not a readable CSV"),
        ("id,label\na,1\n", "missing column(s) request_id"),
        ("request_id,outcome\na,1\n", "missing column(s) label"),
    ],
)
def test_bad_labels_files_are_clear_errors(text: str | None, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(FeedbackInputError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        read_labels_file(BANK, path)


def test_cli_bad_input_exits_2(bank_state: Settings, tmp_path: Path) -> None:
    env = state_env(bank_state, PORTFOLIO_PREDICTION_LOG_DIR=str(tmp_path / "p"))
    runner = CliRunner()
    res = runner.invoke(cli_app, ["feedback", "bankchurn", str(tmp_path / "none.csv")], env=env)
    assert res.exit_code == 2 and "file not found" in res.output
    bad = _csv(tmp_path / "b.csv", "id,label\na,1\n")
    res = runner.invoke(cli_app, ["feedback", "bankchurn", str(bad)], env=env)
    assert res.exit_code == 2 and "request_id" in res.output
    res = runner.invoke(cli_app, ["performance", "bankchurn", "-o", str(tmp_path / "r.json")], env=env)
    assert res.exit_code == 2 and "no logged prediction has a label" in res.output
    res = runner.invoke(
        cli_app, ["performance", "bankchurn", "-o", "r.json", "--since", "last week"], env=env
    )
    assert res.exit_code == 2 and "--since" in res.output


def test_degraded_rule() -> None:
    hold = {"roc_auc": {"value": 0.86, "ci_low": 0.84, "ci_high": 0.88}}
    worse = {"roc_auc": {"value": 0.70, "ci_low": 0.66, "ci_high": 0.74}}
    near = {"roc_auc": {"value": 0.80, "ci_low": 0.74, "ci_high": 0.83}}  # 0.83 >= 0.86 x 0.95
    assert degraded(BANK, worse, hold, 0.05)[0] is True
    assert degraded(BANK, near, hold, 0.05)[0] is False
    assert degraded(BANK, worse, None, 0.05) == (False, "no hold-out roc_auc to compare with")
    rmse_hold = {"rmse": {"value": 1000.0, "ci_low": 950.0, "ci_high": 1050.0}}
    assert degraded(CAR, {"rmse": {"value": 1300.0, "ci_low": 1200.0, "ci_high": 1400.0}}, rmse_hold, 0.05)[0]
    assert not degraded(
        CAR, {"rmse": {"value": 1100.0, "ci_low": 1040.0, "ci_high": 1200.0}}, rmse_hold, 0.05
    )[0]


def test_versions_are_reported_apart(synth_trained: Settings, tmp_path: Path) -> None:
    registry.configure(synth_trained)
    plog = PredictionLog(tmp_path, synthetic.CLASSIFIER.name)
    rng = np.random.default_rng(1)
    labels = ["request_id,label"]
    for i in range(200):
        version = "1" if i < 120 else "2"
        y = int(rng.random() < 0.4)
        p = float(np.clip(0.5 * y + 0.5 * rng.random(), 0, 1))
        plog.submit(
            f"r{i}", version, "compiled", {"x1": [0.0]}, [{"probability": p, "threshold": 0.5}], False
        )
        labels.append(f"r{i},{y}")
    plog.close()
    record_feedback(synthetic.CLASSIFIER, tmp_path, _csv(tmp_path / "l.csv", "\n".join(labels) + "\n"))
    report = performance_report(synthetic.CLASSIFIER, tmp_path, rounds=100)
    assert report["rows"] == 200 and report["model_version"] == "2"
    assert {v: r["rows"] for v, r in report["versions"].items()} == {"1": 120, "2": 80}
    assert report["versions"]["1"]["holdout_metrics"]["roc_auc"]["value"] > 0.5  # v1 is registered
    assert report["versions"]["2"]["holdout_metrics"] is None  # v2 is not
    assert report["metrics"] == report["versions"]["2"]["metrics"]


# ------------------------------------------------------ end to end: what the API answered, realized
def test_realized_metrics_equal_those_of_the_apis_answers(
    bank_state: Settings, data_dir: Path, tmp_path: Path
) -> None:
    """A real `portfolio serve`: real rows in (a batch and single requests), the true labels
    back through `portfolio feedback`, and `portfolio performance` equals the metrics computed
    here from the responses."""
    raw = pd.read_csv(data_dir / BANK.data_file).sample(400, random_state=3).reset_index(drop=True)
    records = json.loads(raw[BANK.feature_names].to_json(orient="records"))
    logs = tmp_path / "predictions"
    env = state_env(bank_state, PORTFOLIO_PREDICTION_LOG_DIR=str(logs))
    answered: dict[str, dict[str, Any]] = {}
    # 30 s timeouts: the suite runs on two workers of a 2-core machine (httpx's default is 5 s).
    with live_api("bankchurn", env, tmp_path) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        r = http.post("/predict/batch", json={"records": records[:300]}, headers={"X-Request-ID": "batch1"})
        assert r.status_code == 200
        for i, p in enumerate(r.json()["predictions"]):
            answered[f"batch1:{i}"] = p
        for i in range(300, 400):
            r = http.post("/predict", json=records[i], headers={"X-Request-ID": f"one{i}"})
            answered[f"one{i}"] = r.json()
        ids = list(answered)
        exited = raw["Exited"].astype(int).tolist()
        truth = {rid: exited[i] for i, rid in enumerate(ids)}
        lines = ["request_id,label", *(f"{rid},{y}" for rid, y in truth.items()), "unknown-1,1", "one300,x"]
        labels = _csv(tmp_path / "labels.csv", "\n".join(lines) + "\n")
        # Within a second of being answered the writer has flushed (it flushes whenever idle).
        for _ in range(100):
            if len(list(read_log(logs, "bankchurn"))) == 400:
                break
            httpx.get(f"{api.url}/health", timeout=30)
        runner = CliRunner()
        res = runner.invoke(cli_app, ["feedback", "bankchurn", str(labels)], env=env)
        assert res.exit_code == 0, res.output
        fb = json.loads(res.stdout[: res.stdout.rindex("}") + 1])
        assert (fb["joined"], fb["unknown_ids"], fb["duplicate_ids"], fb["invalid_rows"]) == (400, 1, 0, 1)
        out = tmp_path / "report.json"
        res = runner.invoke(cli_app, ["performance", "bankchurn", "--output", str(out)], env=env)
        assert res.exit_code == 0, res.output
        scrape = http.get("/metrics").text
    report = json.loads(out.read_text())
    y = np.array([truth[rid] for rid in ids])
    proba = np.array([answered[rid]["probability"] for rid in ids])
    threshold = answered[ids[0]]["threshold"]
    pred = (proba >= threshold).astype(int)
    assert (pred == np.array([answered[rid]["prediction"] for rid in ids])).all()
    m = report["metrics"]
    assert report["service"] == "bankchurn" and report["rows"] == 400
    assert report["model_version"] == answered[ids[0]]["model_version"]
    assert m["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, proba), abs=1e-12)
    assert m["precision"]["value"] == pytest.approx(skm.precision_score(y, pred), abs=1e-12)
    assert m["recall"]["value"] == pytest.approx(skm.recall_score(y, pred), abs=1e-12)
    assert m["f1"]["value"] == pytest.approx(skm.f1_score(y, pred), abs=1e-12)
    for name in ("roc_auc", "precision", "recall", "f1"):
        assert m[name]["ci_low"] <= m[name]["value"] <= m[name]["ci_high"]
        assert m[name]["ci_low"] < m[name]["ci_high"]
    registry.configure(bank_state)
    champion = registry.load_champion(BANK, bank_state)
    assert report["holdout_metrics"]["roc_auc"]["value"] == pytest.approx(champion.metrics["test_roc_auc"])
    assert isinstance(report["degraded"], bool) and report["degraded_reason"]
    assert (out.with_suffix(".html")).read_text().count("Realized performance") >= 1
    # The API serves the latest report at /metrics (written by `performance` while it ran).
    version = report["model_version"]
    wanted = f'metric="roc_auc",model_service="bankchurn",model_version="{version}",stat="value"'
    line = "portfolio_realized_metric{" + wanted + "}"
    served = next(s for s in scrape.splitlines() if s.startswith(line))
    assert float(served.split()[-1]) == pytest.approx(m["roc_auc"]["value"])
    assert f'portfolio_realized_rows{{model_service="bankchurn",model_version="{version}"}} 400.0' in scrape


@pytest.fixture
def reg_client(synth_regressor: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    logs = tmp_path / "predictions"
    settings = synth_regressor.model_copy(update={"prediction_log_dir": logs})
    with TestClient(create_app(synthetic.REGRESSOR, settings)) as c:
        wait_ready(c)
        yield c, logs


def test_regressor_realized_metrics_equal_those_of_the_answers(
    reg_client: tuple[TestClient, Path], synth_regressor: Settings, tmp_path: Path
) -> None:
    c, logs = reg_client
    frame = synthetic.make_frame(300, seed=9)
    records = json.loads(frame[synthetic.REGRESSOR.feature_names].to_json(orient="records"))
    r = c.post("/predict/batch", json={"records": records}, headers={"X-Request-ID": "q"})
    answers = r.json()["predictions"]
    c.app.state.prediction_log.close()  # type: ignore[attr-defined]  # as at shutdown: all written
    lines = ["request_id,label", *(f"q:{i},{p}" for i, p in enumerate(frame["price"]))]
    record_feedback(synthetic.REGRESSOR, logs, _csv(tmp_path / "l.csv", "\n".join(lines) + "\n"))
    registry.configure(synth_regressor)
    report = performance_report(synthetic.REGRESSOR, logs, rounds=200)
    y = frame["price"].to_numpy()
    pred = np.array([a["price"] for a in answers])
    low = np.array([a["price_low"] for a in answers])
    high = np.array([a["price_high"] for a in answers])
    m = report["metrics"]
    assert m["rmse"]["value"] == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)), rel=1e-12)
    assert m["mae"]["value"] == pytest.approx(np.mean(np.abs(y - pred)), rel=1e-12)
    assert m["r2"]["value"] == pytest.approx(skm.r2_score(y, pred), rel=1e-12)
    assert m["interval_coverage"]["value"] == pytest.approx(np.mean((y >= low) & (y <= high)), abs=1e-12)
    assert "interval_coverage" in report["holdout_metrics"]
    for name in ("rmse", "mae", "r2", "interval_coverage"):
        assert m[name]["ci_low"] <= m[name]["value"] <= m[name]["ci_high"]
    # Prometheus: the collector reads the saved report.
    save_latest(report, logs)
    fams = {f.name: f for f in RealizedCollector("synthreg", latest_path(logs, "synthreg")).collect()}
    values = {tuple(s.labels.values()): s.value for s in fams["portfolio_realized_metric"].samples}
    assert values[("synthreg", report["model_version"], "rmse", "value")] == pytest.approx(m["rmse"]["value"])
