"""Drift monitoring on the real data: the batch report (`portfolio drift`), the reference stored
with the model, the API's rolling window and its drift gauges (their alert rules: test_prometheus.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from portfolio.bankchurn.spec import SPEC as BANK
from portfolio.cli import app as cli_app
from portfolio.core import registry
from portfolio.core.data import load_training_data
from portfolio.core.monitoring.drift import drift_report
from portfolio.core.monitoring.live import LiveMonitor
from portfolio.core.monitoring.reference import (
    REFERENCE_ARTIFACT,
    DriftReference,
    load_reference,
    reference_cache_path,
)
from portfolio.core.monitoring.report import write_html
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec
from portfolio.services import SERVICES
from tests.conftest import make_settings

# ------------------------------------------------------------------------------------- helpers
_DATA: dict[str, pd.DataFrame] = {}


def service_rows(spec: ServiceSpec, data_dir: Path, tmp_path: Path) -> pd.DataFrame:
    """The service's validated real rows (cached per test session)."""
    if spec.name not in _DATA:
        settings = make_settings(tmp_path / "s", data_dir=data_dir)
        _DATA[spec.name] = load_training_data(spec, settings).X
    return _DATA[spec.name]


def bank_shift(frame: pd.DataFrame) -> pd.DataFrame:
    """The issue's example: ages +15 years, balances x1.5, France and Germany swapped."""
    out = frame.copy()
    out["Age"] = out["Age"] + 15
    out["Balance"] = out["Balance"] * 1.5
    out["Geography"] = out["Geography"].map({"France": "Germany", "Germany": "France", "Spain": "Spain"})
    return out


def generic_shift(spec: ServiceSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, set[str]]:
    """Shift one numeric field (the one with the most distinct values: x1.5) and one categorical
    field (the one with the most categories: its most frequent value relabelled as the second)."""
    out = frame.copy()
    shifted: set[str] = set()
    numeric = [f for f in spec.fields if f.kind in ("int", "float")]
    if numeric:
        f = max(numeric, key=lambda f: frame[f.name].nunique())
        out[f.name] = frame[f.name] * 1.5
        shifted.add(f.name)
    cats = [f for f in spec.fields if f.kind in ("category", "text") and frame[f.name].nunique() >= 2]
    if cats:
        f = max(cats, key=lambda f: frame[f.name].nunique())
        top = frame[f.name].value_counts().index[:2]
        out[f.name] = frame[f.name].replace({top[0]: top[1]})
        shifted.add(f.name)
    return out, shifted


# --------------------------------------------------------------------------------- batch report
@pytest.mark.parametrize("service", list(SERVICES))
def test_random_samples_of_a_services_own_data_show_no_drift(
    service: str, data_dir: Path, tmp_path: Path
) -> None:
    spec = SERVICES[service]
    rows = service_rows(spec, data_dir, tmp_path)
    ref = DriftReference.from_frame(spec, rows)
    for seed in range(5):
        report = drift_report(spec, ref, rows.sample(300, random_state=seed))
        assert not report["drift_detected"], (seed, report["drifted_features"])
        assert all(r["psi"] < r["psi_threshold"] for r in report["features"].values())


@pytest.mark.parametrize("service", list(SERVICES))
def test_shifted_sample_drifts_on_exactly_the_shifted_features(
    service: str, data_dir: Path, tmp_path: Path
) -> None:
    spec = SERVICES[service]
    rows = service_rows(spec, data_dir, tmp_path)
    ref = DriftReference.from_frame(spec, rows)
    sample = rows.sample(400, random_state=7)
    shifted, expected = generic_shift(spec, sample)
    assert expected
    report = drift_report(spec, ref, shifted)
    assert report["drift_detected"]
    assert set(report["drifted_features"]) == expected
    for name in expected:
        r = report["features"][name]
        assert r["psi"] >= r["psi_threshold"] and r["pvalue"] < r["pvalue_threshold"]


def test_bankchurn_age_balance_geography_shift(data_dir: Path, tmp_path: Path) -> None:
    rows = service_rows(BANK, data_dir, tmp_path)
    ref = DriftReference.from_frame(BANK, rows)
    sample = rows.sample(400, random_state=11)
    assert not drift_report(BANK, ref, sample)["drift_detected"]
    report = drift_report(BANK, ref, bank_shift(sample))
    assert set(report["drifted_features"]) == {"Age", "Balance", "Geography"}
    feats = report["features"]
    assert feats["Age"]["method"] == "psi+ks" and feats["Geography"]["method"] == "psi+chi2"
    assert feats["Age"]["current_mean"] == pytest.approx(feats["Age"]["reference_mean"] + 15, abs=2.5)
    assert "chi2_pvalue" in feats["Geography"] and "ks_statistic" in feats["Balance"]


def test_small_batches_do_not_false_alarm(data_dir: Path, tmp_path: Path) -> None:
    """PSI's noise grows as rows shrink: the threshold follows it, and the test must agree."""
    rows = service_rows(BANK, data_dir, tmp_path)
    ref = DriftReference.from_frame(BANK, rows)
    alarms = [drift_report(BANK, ref, rows.sample(200, random_state=s))["drift_detected"] for s in range(30)]
    assert not any(alarms)
    small = drift_report(BANK, ref, rows.sample(100, random_state=0))["features"]["CreditScore"]
    large = drift_report(BANK, ref, rows.sample(1000, random_state=0))["features"]["CreditScore"]
    assert small["psi_threshold"] > 0.2 and large["psi_threshold"] == 0.1


def test_html_report_has_a_plot_per_feature(data_dir: Path, tmp_path: Path) -> None:
    rows = service_rows(BANK, data_dir, tmp_path)
    ref = DriftReference.from_frame(BANK, rows)
    report = drift_report(BANK, ref, bank_shift(rows.sample(300, random_state=1)))
    report["current"]["invalid_rows"] = 0
    text = write_html(report, tmp_path / "r.html").read_text()
    assert "DRIFT DETECTED" in text
    assert text.count('class="plotly-graph-div"') == len(BANK.fields)
    assert "https://cdn" not in text.split("</head>")[0]  # works offline: plotly.js is inline
    for name in BANK.feature_names:
        assert name in text


# --------------------------------------------------------------------- reference + the real CLI
def test_reference_is_logged_with_the_model_and_loaded_through_the_registry(bank_state: Settings) -> None:
    loaded = registry.load_champion(BANK, bank_state)
    assert loaded.run_id
    ref = load_reference(BANK, bank_state, loaded.run_id, loaded.version)
    data = ref.to_dict()
    assert set(data["features"]) == set(BANK.feature_names)
    # The rows the served model was fitted on: BankChurn is refit on all 8,500 (refit_full).
    assert data["rows"] == 8500
    assert len(data["sample"]["Age"]) == 2000
    assert data["prediction"]["threshold"] == pytest.approx(loaded.threshold)
    assert 0.05 < data["prediction"]["positive_rate"] < 0.5
    assert reference_cache_path(bank_state, "bankchurn", loaded.version).exists()
    assert REFERENCE_ARTIFACT in {a.path for a in MlflowClient().list_artifacts(loaded.run_id)}


def _cli(settings: Settings, *args: str) -> Any:
    env = {
        "PORTFOLIO_STATE_DIR": str(settings.resolved_state_dir),
        "PORTFOLIO_MODELS_DIR": str(settings.resolved_models_dir),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "PORTFOLIO_MODEL_LOAD_RETRIES": "1",
    }
    return CliRunner().invoke(cli_app, list(args), env=env, catch_exceptions=False)


def test_cli_drift_against_the_champions_reference(
    bank_state: Settings, data_dir: Path, tmp_path: Path
) -> None:
    raw = pd.read_csv(data_dir / BANK.data_file)
    sample = raw.sample(500, random_state=3)
    sample.to_csv(tmp_path / "same.csv", index=False)
    shifted = bank_shift(sample)
    shifted = shifted.astype({"CreditScore": object})
    shifted.iloc[0, shifted.columns.get_loc("CreditScore")] = (
        "abc"  # one invalid row: counted, not dropped silently
    )
    shifted.to_csv(tmp_path / "shifted.csv", index=False)

    r = _cli(
        bank_state, "drift", "bankchurn", str(tmp_path / "same.csv"), "--output", str(tmp_path / "a.json")
    )
    assert r.exit_code == 0, r.output
    same = json.loads((tmp_path / "a.json").read_text())
    assert same["drift_detected"] is False and same["current"]["rows"] == 500
    assert same["reference"]["source"] == "all rows (refit after evaluation)"  # BankChurn: refit_full
    assert same["model_version"] == "1"
    assert same["prediction"]["psi"] < 0.1
    assert (tmp_path / "a.html").exists()

    r = _cli(
        bank_state, "drift", "bankchurn", str(tmp_path / "shifted.csv"),
        "--output", str(tmp_path / "b.json"), "--html", str(tmp_path / "b" / "report.html"),
        "--fail-on-drift",
    )  # fmt: skip
    assert r.exit_code == 1, r.output
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["drift_detected"] is True
    assert set(report["drifted_features"]) == {"Age", "Balance", "Geography"}
    assert report["current"]["invalid_rows"] == 1 and report["current"]["rows"] == 499
    assert any("CreditScore" in reason for reason in report["current"]["invalid_by_reason"])
    for r_ in report["features"].values():
        assert {"psi", "pvalue", "psi_threshold", "pvalue_threshold", "drifted", "method"} <= set(r_)
    # Older customers churn more: the score distribution moves too (reported separately).
    assert report["prediction"]["current_positive_rate"] > report["prediction"]["reference_positive_rate"]
    assert (tmp_path / "b" / "report.html").exists()

    # An explicit reference file instead of the stored one.
    r = _cli(
        bank_state, "drift", "bankchurn", str(tmp_path / "same.csv"),
        "--reference", str(data_dir / BANK.data_file), "--output", str(tmp_path / "c.json"),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["reference"]["rows"] == 8500 and not c["drift_detected"]


def test_cli_drift_errors_are_clear(bank_state: Settings, tmp_path: Path) -> None:
    r = _cli(
        bank_state, "drift", "bankchurn", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "x.json")
    )
    assert r.exit_code == 2 and "file not found" in r.output
    (tmp_path / "cols.csv").write_text("Age,Gender\n40,Male\n")
    r = _cli(
        bank_state, "drift", "bankchurn", str(tmp_path / "cols.csv"), "--output", str(tmp_path / "x.json")
    )
    assert r.exit_code == 2 and "missing required columns" in r.output and "CreditScore" in r.output


# --------------------------------------------------------------------------------- live window
def test_live_window_is_bounded_and_evaluated_lazily(data_dir: Path, tmp_path: Path) -> None:
    rows = service_rows(BANK, data_dir, tmp_path)
    monitor = LiveMonitor(BANK, window=1000)
    monitor.reference, monitor.reference_version = DriftReference.from_frame(BANK, rows), "1"
    records = bank_shift(rows.head(1500)).to_dict(orient="records")
    for record in records:
        monitor.observe({f.name: [record.get(f.name)] for f in BANK.fields}, [0.5])
    # Observing is an append: no statistics are computed on the request path (speed itself is
    # measured by the benchmarks, not asserted here).
    assert len(monitor) == 1000 and monitor.evaluations == 0
    result = monitor.evaluate()
    assert monitor.evaluations == 1 and result["rows"] == 1000
    assert {n for n, r in result["features"].items() if r["drifted"]} == {"Age", "Balance", "Geography"}
    assert monitor.evaluate() is result and monitor.evaluations == 1  # cached until new records
    small = LiveMonitor(BANK, window=1000)
    small.reference, small.reference_version = monitor.reference, "1"
    small.observe({f.name: [r.get(f.name) for r in records[:150]] for f in BANK.fields}, [0.5] * 150)
    assert not any(r["drifted"] for r in small.evaluate()["features"].values())  # too few rows


def test_live_window_keeps_exactly_the_last_rows_across_requests() -> None:
    """Requests of any size: the window holds the last ``window`` rows in order (a request
    only partly inside it counts only its newest rows), and drops what is wholly older."""
    monitor = LiveMonitor(BANK, window=1000)
    sizes, start = [300, 400, 1, 500, 250], 0
    for n in sizes:
        scores = [float(i) for i in range(start, start + n)]
        values = {f.name: [f"{f.name}{i}" for i in range(start, start + n)] for f in BANK.fields}
        monitor.observe(values, scores)
        start += n
        assert len(monitor) == min(start, 1000)
    columns, scores = monitor._window()
    assert scores == [float(i) for i in range(start - 1000, start)]
    assert columns["Age"] == [f"Age{i}" for i in range(start - 1000, start)]
    assert monitor._rows < 1000 + 250  # the 300- and 400-row requests were dropped
    result = monitor.evaluate()
    assert result["rows"] == 1000 and result["prediction"]["mean"] == np.mean(scores)
    monitor.observe({f.name: [] for f in BANK.fields}, [])  # nothing to add
    assert len(monitor) == 1000


def _gauges(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame[BANK.feature_names].to_json(orient="records"))


def test_metrics_expose_drift_and_prediction_gauges(bank_client: TestClient, data_dir: Path) -> None:
    raw = pd.read_csv(data_dir / BANK.data_file)
    monitor = bank_client.app.state.monitor  # type: ignore[attr-defined]
    before = monitor.evaluations
    sample = raw.sample(300, random_state=5)
    for chunk in (sample.iloc[i : i + 100] for i in range(0, 300, 100)):
        assert bank_client.post("/predict/batch", json={"records": _records(chunk)}).status_code == 200
    assert monitor.evaluations == before  # predictions never compute drift
    g = _gauges(bank_client.get("/metrics").text)
    svc = ("model_service", "bankchurn")
    assert g[("portfolio_drift_window_rows", (svc,))] == 300
    assert g[("portfolio_drift_reference_loaded", (svc,))] == 1
    assert g[("portfolio_drift_detected", (svc,))] == 0
    for name in BANK.feature_names:
        assert g[("portfolio_feature_drifted", (("feature", name), svc))] == 0
        assert 0 <= g[("portfolio_feature_drift_psi", (("feature", name), svc))] < 0.1
    assert 0 < g[("portfolio_prediction_score", (svc, ("stat", "mean")))] < 1
    assert g[("portfolio_prediction_drift_psi", (svc,))] < 0.1

    shifted = bank_shift(raw[raw["Age"] <= 85].sample(1000, random_state=6))  # stays within the schema
    for chunk in (shifted.iloc[i : i + 250] for i in range(0, 1000, 250)):
        r = bank_client.post("/predict/batch", json={"records": _records(chunk)})
        assert r.status_code == 200, r.text
    g = _gauges(bank_client.get("/metrics").text)
    assert g[("portfolio_drift_window_rows", (svc,))] == 1000  # bounded: the 300 older ones left
    drifted = {n for n in BANK.feature_names if g[("portfolio_feature_drifted", (("feature", n), svc))] == 1}
    assert drifted == {"Age", "Balance", "Geography"}
    assert g[("portfolio_drift_detected", (svc,))] == 1
    rate = g[("portfolio_prediction_positive_rate", (svc,))]
    assert rate > g[("portfolio_prediction_reference_positive_rate", (svc,))]
