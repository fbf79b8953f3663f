"""The closed loop on real processes, BankChurn on its real data: `portfolio serve` logs what it
answers, is restarted with shadow scoring on, the true outcomes come back through `portfolio
feedback`, `portfolio performance` reports the realized metrics (equal to those computed here from
what the API answered) and compares champion and challenger on the same labelled rows, and
`portfolio promote --if-better` acts on that comparison; `portfolio retrain` logs its decision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn import metrics as skm
from typer.testing import CliRunner

from portfolio.bankchurn.spec import SPEC as BANK
from portfolio.cli import app as cli_app
from portfolio.core import registry
from portfolio.core.monitoring.predictions import read_log
from portfolio.core.serving.inference import load_predictor
from portfolio.core.settings import Settings
from portfolio.core.training.train import train_service
from tests.conftest import make_settings
from tests.support.live import live_api, require_data, state_env

# A weak first model (the logistic baseline wins CV against a 5-stump booster).
WEAK = {"candidates": {"xgboost": {"n_estimators": 5, "max_depth": 1}, "logistic_baseline": {"C": 1.0}}}


@pytest.fixture(scope="module")
def rolled_back(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """v1 (weak) and v2 (the real parameters, which the gate made champion), then a rollback:
    v1 @champion again and v2 @challenger, waiting for live evidence."""
    require_data(BANK)
    settings = make_settings(tmp_path_factory.mktemp("loop") / "state")
    assert train_service(BANK, settings, params=WEAK).alias == "champion"
    v2 = train_service(BANK, settings)
    assert (v2.version, v2.alias) == ("2", "champion"), v2.gate
    registry.set_alias(BANK.name, registry.CHAMPION, "1")
    registry.set_alias(BANK.name, registry.CHALLENGER, "2")
    return settings


def _answers(url: str, records: list[dict[str, Any]], tag: str) -> dict[str, dict[str, Any]]:
    """A batch of all but the last 50 records (ids ``<tag>:<i>``), then the rest one by one."""
    out: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("/predict/batch", json={"records": records[:-50]}, headers={"X-Request-ID": tag})
        assert r.status_code == 200, r.text
        for i, p in enumerate(r.json()["predictions"]):
            out[f"{tag}:{i}"] = p
        for i, rec in enumerate(records[-50:]):
            r = http.post("/predict", json=rec, headers={"X-Request-ID": f"{tag}-one{i}"})
            assert r.status_code == 200, r.text
            out[f"{tag}-one{i}"] = r.json()
    return out


def _wait_for_challenger(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        for _ in range(600):
            shadow = http.get("/model").json()["shadow"]
            if shadow["challenger_version"] == "2":
                return
            httpx.get(f"{url}/health", timeout=30)
    raise AssertionError(f"the challenger never loaded: {shadow}")


def test_serve_log_restart_feedback_performance_shadow_promote(
    rolled_back: Settings, data_dir: Path, tmp_path: Path
) -> None:
    raw = pd.read_csv(data_dir / BANK.data_file).sample(700, random_state=11).reset_index(drop=True)
    records: list[dict[str, Any]] = json.loads(raw[BANK.feature_names].to_json(orient="records"))
    first, second = records[:350], records[350:]
    logs = tmp_path / "predictions"
    env = state_env(rolled_back, PORTFOLIO_PREDICTION_LOG_DIR=str(logs))

    # 1. Serve and log, shadow off; SIGTERM (a restart) flushes the log.
    with live_api("bankchurn", env | {"PORTFOLIO_SHADOW": "false"}, tmp_path) as api:
        before = _answers(api.url, first, "a")
    # 2. Restarted with shadow scoring: the same records get the same answers, and the challenger
    #    scores them (and new ones) off the request path.
    with live_api("bankchurn", env | {"PORTFOLIO_SHADOW": "true"}, tmp_path) as api:
        _wait_for_challenger(api.url)
        again = _answers(api.url, first, "b")
        fresh = _answers(api.url, second, "c")
    assert [again[k.replace("a", "b", 1)] for k in before] == list(before.values())
    answered = before | again | fresh
    assert {a["model_version"] for a in answered.values()} == {"1"}

    lines = list(read_log(logs, "bankchurn"))
    served = {r["request_id"]: r for r in lines if not r["shadow"]}
    shadow = {r["request_id"]: r for r in lines if r["shadow"]}
    assert set(served) == set(answered)  # nothing lost across the restart
    assert all(served[k]["outputs"] == v for k, v in answered.items())
    assert set(shadow) == set(again) | set(fresh)  # every record answered with shadow on
    assert {r["model_version"] for r in shadow.values()} == {"2"}

    # 3. The true outcomes come back.
    exited = raw["Exited"].astype(int).tolist()
    order = {**{f"a:{i}": i for i in range(300)}, **{f"a-one{i}": 300 + i for i in range(50)}}
    truth_of = {k: exited[i] for k, i in order.items()}
    truth_of |= {k.replace("a", "b", 1): y for k, y in truth_of.items()}
    truth_of |= {f"c:{i}": exited[350 + i] for i in range(300)} | {
        f"c-one{i}": exited[650 + i] for i in range(50)
    }
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\n" + "".join(f"{k},{y}\n" for k, y in truth_of.items()))
    runner = CliRunner()
    res = runner.invoke(cli_app, ["feedback", "bankchurn", str(labels)], env=env)
    assert res.exit_code == 0, res.output
    assert f'"joined": {len(truth_of)}' in res.stdout

    # 4. Realized performance: the champion's figures from what the API answered, and the
    #    comparison with the challenger on the same labelled rows.
    out = tmp_path / "performance.json"
    res = runner.invoke(cli_app, ["performance", "bankchurn", "--output", str(out)], env=env)
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    ids = list(answered)
    y = np.array([truth_of[k] for k in ids])
    proba = np.array([answered[k]["probability"] for k in ids])
    pred = np.array([answered[k]["prediction"] for k in ids])
    assert report["rows"] == 1050 and list(report["versions"]) == ["1"]
    m = report["metrics"]
    assert m["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, proba), abs=1e-12)
    assert m["f1"]["value"] == pytest.approx(skm.f1_score(y, pred), abs=1e-12)
    assert m["precision"]["value"] == pytest.approx(skm.precision_score(y, pred), abs=1e-12)
    assert m["recall"]["value"] == pytest.approx(skm.recall_score(y, pred), abs=1e-12)
    (comp,) = report["comparisons"]
    both = sorted(shadow)
    assert (comp["champion_version"], comp["challenger_version"], comp["rows"]) == ("1", "2", len(both))
    yb = np.array([truth_of[k] for k in both])
    champ = np.array([answered[k]["probability"] for k in both])
    # The challenger's outputs are its own: v2 scores those records the same in this process.
    v2 = load_predictor(BANK, rolled_back, "2")
    chal_direct = np.array(
        [o["probability"] for o in v2.predict_records([served[k]["inputs"] for k in both], explain=False)]
    )
    chal_logged = np.array([shadow[k]["outputs"]["probability"] for k in both])
    assert np.allclose(chal_logged, chal_direct, atol=1e-9)
    assert comp["champion"]["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(yb, champ), abs=1e-12)
    assert comp["challenger"]["roc_auc"]["value"] == pytest.approx(
        skm.roc_auc_score(yb, chal_logged), abs=1e-12
    )
    # v2 (the real parameters) beats the weak v1 on these rows: the gate's rule says promote.
    assert skm.roc_auc_score(yb, chal_logged) >= skm.roc_auc_score(yb, champ)
    assert comp["challenger_wins"] is True

    # 5. promote --if-better acts on that comparison, and says why.
    res = runner.invoke(cli_app, ["promote", "bankchurn", "--if-better"], env=env)
    assert res.exit_code == 0, res.output
    decision = json.loads(res.stdout)
    assert decision["promoted"] and decision["comparison"]["rows"] == len(both)
    assert "not worse than" in decision["reason"]
    registry.configure(rolled_back)
    assert str(registry.champion_version("bankchurn").version) == "2"  # type: ignore[union-attr]
    res = runner.invoke(cli_app, ["promote", "bankchurn", "--if-better"], env=env)
    assert res.exit_code == 2 and "no @challenger" in res.output

    # 6. retrain reads the evidence for the current champion and logs its decision to MLflow.
    res = runner.invoke(cli_app, ["retrain", "bankchurn", "--when", "drift"], env=env)
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    tags = MlflowClient().get_run(result["run_id"]).data.tags
    assert tags["retrain.decision"] == result["decision"] and tags["retrain.reason"] == result["reason"]
