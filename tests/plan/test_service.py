"""Plan Recommendation end to end on the real data: train once (session fixture), then the
registry, accuracy, the fast path, the batch CLI, evaluate, drift and the real API process."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from portfolio.core import registry
from portfolio.core.data import read_raw_csv
from portfolio.core.schema import validate_frame
from portfolio.plan.spec import SPEC
from portfolio.services import SERVICES
from tests.plan.conftest import DATA_FILE
from tests.support.helpers import ROOT
from tests.support.live import TrainedService, live_api
from tests.support.parity import assert_fast_path_parity, assert_served_as_in_process

pytestmark = pytest.mark.integration
PORTFOLIO = str(ROOT / ".venv" / "bin" / "portfolio")


def _cli(trained: TrainedService, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **trained.env()}
    return subprocess.run([PORTFOLIO, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_registered_and_the_real_data_passes_the_schema() -> None:
    assert SERVICES["plan"] is SPEC
    raw = read_raw_csv(DATA_FILE)
    assert validate_frame(raw, SPEC.fields).n_invalid == 0
    assert set(raw.columns) == {*SPEC.feature_names, "is_ultra"}


def test_training_selects_by_accuracy_and_registers_a_champion(plan_trained: TrainedService) -> None:
    out = plan_trained.outcome
    assert out.alias == "champion" and out.gate["metric"] == "accuracy"
    assert set(out.candidates) == set(SPEC.candidates)
    assert all("cv_accuracy_fold_std" in c for c in out.candidates.values())
    # Issue target on held-back data: accuracy >= 0.81; out of fold and on our hold-out, near it.
    assert out.cv["accuracy"]["value"] >= 0.79
    assert out.test["accuracy"]["value"] >= 0.78
    loaded = registry.load_champion(SPEC, plan_trained.settings)
    assert loaded.version == out.version and loaded.threshold == pytest.approx(out.threshold)
    assert (plan_trained.settings.resolved_models_dir / "plan" / "model_card.md").exists()


def test_compiled_fast_path_matches_the_registered_model(plan_trained: TrainedService) -> None:
    assert_fast_path_parity(SPEC, plan_trained.settings, DATA_FILE.parent)


def test_predict_cli_names_the_tariff_and_the_bad_field(plan_trained: TrainedService, tmp_path: Path) -> None:
    rows = pd.read_csv(DATA_FILE, dtype=str).head(40)
    rows.loc[7, "minutes"] = "-5"
    path = tmp_path / "in.csv"
    rows.to_csv(path, index=False)
    result = _cli(plan_trained, "predict", "plan", str(path), "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 0, result.stderr
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert list(out.columns) == ["probability", "prediction", "tariff", "error"] and len(out) == 40
    assert "minutes" in out.loc[7, "error"] and out.loc[7, "probability"] == ""
    good = out.drop(index=7)
    assert ((good["prediction"].astype(int) == 1) == (good["tariff"] == "Ultra")).all()
    assert set(good["tariff"]) <= {"Ultra", "Smart"}


def test_evaluate_and_drift_cli(plan_trained: TrainedService, tmp_path: Path) -> None:
    raw = pd.read_csv(DATA_FILE).head(600)
    path = tmp_path / "labeled.csv"
    raw.to_csv(path, index=False)
    result = _cli(plan_trained, "evaluate", "plan", str(path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows_evaluated"] == 600 and 0.7 < report["metrics"]["accuracy"]["value"] <= 1
    # Heavy data users only: mb_used must drift.
    heavy = raw.nlargest(300, "mb_used")
    heavy.to_csv(tmp_path / "heavy.csv", index=False)
    result = _cli(
        plan_trained, "drift", "plan", str(tmp_path / "heavy.csv"), "--output", str(tmp_path / "d.json")
    )
    assert result.returncode == 0, result.stderr
    drift = json.loads((tmp_path / "d.json").read_text())
    assert drift["drift_detected"] is True
    assert "mb_used" in drift["drifted_features"]


@pytest.fixture(scope="module")
def api(plan_trained: TrainedService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `portfolio serve plan` process (uvicorn) on a free loopback port."""
    with live_api("plan", plan_trained.env(), tmp_path_factory.mktemp("plan-api")) as served:
        yield served.url


def test_api_predicts_the_tariff_explains_and_names_bad_fields(
    api: str, plan_trained: TrainedService
) -> None:
    light = {"calls": 20.0, "minutes": 150.0, "messages": 5.0, "mb_used": 8000.0}
    heavy = {"calls": 120.0, "minutes": 900.0, "messages": 120.0, "mb_used": 35000.0}
    r = httpx.post(f"{api}/predict/batch", json={"records": [light, heavy]}, timeout=30)
    assert r.status_code == 200, r.text
    low, high = r.json()["predictions"]
    assert low["probability"] < high["probability"] and high["tariff"] == "Ultra"
    for p in (low, high):
        assert p["prediction"] == int(p["probability"] >= p["threshold"])
        assert p["tariff"] == ("Ultra" if p["prediction"] == 1 else "Smart")
    r = httpx.post(f"{api}/explain", json=heavy, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    total = body["base_value"] + sum(c["contribution"] for c in body["contributions"])
    assert total == pytest.approx(body["output_value"], abs=1e-4)
    r = httpx.post(f"{api}/predict", json=light | {"minutes": -1}, timeout=10)
    assert r.status_code == 422 and [d["field"] for d in r.json()["detail"]] == ["minutes"]
    assert httpx.get(f"{api}/model", timeout=10).json()["outputs"] == ["probability", "prediction", "tariff"]


def test_explain_cli_adds_up_and_names_a_bad_field(plan_trained: TrainedService) -> None:
    heavy = {"calls": 120.0, "minutes": 900.0, "messages": 120.0, "mb_used": 35000.0}
    result = _cli(plan_trained, "explain", "plan", json.dumps(heavy))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["tariff"] in ("Ultra", "Smart") and body["model_version"] == plan_trained.outcome.version
    total = body["base_value"] + sum(c["contribution"] for c in body["contributions"])
    assert total == pytest.approx(body["output_value"], abs=1e-4)
    bad = _cli(plan_trained, "explain", "plan", json.dumps(heavy | {"mb_used": "lots"}))
    assert bad.returncode == 2 and "mb_used" in bad.stderr


def test_served_worker_without_pyarrow_answers_as_in_process(
    api: str, plan_trained: TrainedService, data_dir: Path
) -> None:
    assert_served_as_in_process(api, SPEC, plan_trained.settings, data_dir)
