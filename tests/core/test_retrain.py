"""`portfolio retrain --when drift|performance|always`: the evidence decides whether to train, the
gate decides the new version's alias, and the decision with its reason is an MLflow run's tags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from portfolio.core import registry
from portfolio.core.monitoring.feedback import record_feedback
from portfolio.core.monitoring.predictions import PredictionLog
from portfolio.core.settings import Settings
from portfolio.core.training.retrain import RetrainInputError, retrain
from portfolio.core.training.train import train_service
from tests.conftest import make_settings
from tests.support import synthetic

SPEC = synthetic.CLASSIFIER


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("retrain")
    (root / "data").mkdir()
    synthetic.write_csv(root / "data" / "synth.csv", n=400)
    settings = make_settings(
        root / "state", data_dir=root / "data", cv_folds=2, prediction_log_dir=root / "predictions"
    )
    assert train_service(SPEC, settings, params={}).alias == "champion"
    return settings


def _run_tags(run_id: str) -> dict[str, str]:
    return dict(MlflowClient().get_run(run_id).data.tags)


def _write(path: Path, report: dict[str, object]) -> Path:
    path.write_text(json.dumps(report))
    return path


def test_no_evidence_skips_and_says_why_in_mlflow(state: Settings) -> None:
    result = retrain(SPEC, state, "performance")
    assert result["decision"] == "skipped" and "no logged prediction has a label" in result["reason"]
    tags = _run_tags(result["run_id"])
    assert tags["retrain.decision"] == "skipped" and tags["retrain.triggered"] == "false"
    assert tags["retrain.reason"] == result["reason"]
    assert MlflowClient().get_run(result["run_id"]).data.params["when"] == "performance"
    result = retrain(SPEC, state, "drift")
    assert result["decision"] == "skipped" and "too few logged records" in result["reason"]


def test_drift_report_decides(state: Settings, tmp_path: Path) -> None:
    calm = _write(
        tmp_path / "d.json", {"service": SPEC.name, "drift_detected": False, "current": {"rows": 500}}
    )
    result = retrain(SPEC, state, "drift", report_path=calm)
    assert result["decision"] == "skipped" and "no drift over 500 rows" in result["reason"]
    assert MlflowClient().get_run(result["run_id"]).data.params["report"] == str(calm)
    before = str(registry.champion_version(SPEC.name).version)  # type: ignore[union-attr]
    shifted = _write(
        tmp_path / "s.json",
        {"service": SPEC.name, "drift_detected": True, "drifted_features": ["x1"], "current": {"rows": 500}},
    )
    result = retrain(SPEC, state, "drift", report_path=shifted)
    assert result["triggered"] and result["decision"] in ("champion", "challenger")
    assert result["version"] == str(int(before) + 1)
    # The same data and seed give the same hold-out score: not worse, so the gate promotes it.
    assert result["decision"] == "champion" and "not worse" in result["gate"]["reason"]
    tags = _run_tags(result["run_id"])
    assert tags["retrain.decision"] == "champion" and tags["retrain.version"] == result["version"]
    assert "drift in 1 feature(s) (x1)" in tags["retrain.reason"] and "gate:" in tags["retrain.reason"]
    train_tags = _run_tags(result["train_run_id"])
    assert train_tags["retrain.when"] == "drift" and train_tags["retrain.reason"].startswith("drift in")


def test_performance_of_the_current_champion_decides(state: Settings, tmp_path: Path) -> None:
    registry.configure(state)
    champion = str(registry.champion_version(SPEC.name).version)  # type: ignore[union-attr]
    other = {"rows": 10, "degraded": True, "degraded_reason": "old"}
    stale = _write(tmp_path / "p.json", {"service": SPEC.name, "versions": {"0": other}})
    result = retrain(SPEC, state, "performance", report_path=stale)
    assert (
        result["decision"] == "skipped"
        and f"no labelled predictions of champion v{champion}" in result["reason"]
    )
    # Computed from the log: the champion's answers with labels that contradict them → degraded.
    log_dir = state.resolved_prediction_log_dir
    plog = PredictionLog(log_dir, SPEC.name)
    rng = np.random.default_rng(0)
    proba = rng.random(300)
    for i, p in enumerate(proba):
        plog.submit(
            f"r{i}", champion, "compiled", {"x1": [0.0]}, [{"probability": p, "threshold": 0.5}], False
        )
    plog.close()
    labels = "request_id,label\n" + "".join(f"r{i},{int(p < 0.5)}\n" for i, p in enumerate(proba))
    (tmp_path / "l.csv").write_text(labels)
    record_feedback(SPEC, log_dir, tmp_path / "l.csv")
    result = retrain(SPEC, state, "performance")
    assert result["triggered"] and f"champion v{champion} degraded on 300 labelled" in result["reason"]
    assert _run_tags(result["run_id"])["retrain.decision"] == result["decision"]


def test_bad_evidence_is_a_clear_error(state: Settings, tmp_path: Path) -> None:
    with pytest.raises(RetrainInputError, match="file not found"):
        retrain(SPEC, state, "drift", report_path=tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RetrainInputError, match="not a JSON report"):
        retrain(SPEC, state, "drift", report_path=tmp_path / "bad.json")
    other = _write(tmp_path / "o.json", {"service": "bankchurn", "drift_detected": True})
    with pytest.raises(RetrainInputError, match="not a synthclf report"):
        retrain(SPEC, state, "drift", report_path=other)
    perf = _write(tmp_path / "p.json", {"service": SPEC.name, "versions": {}})
    with pytest.raises(RetrainInputError, match="not a drift report"):
        retrain(SPEC, state, "drift", report_path=perf)
    with pytest.raises(RetrainInputError, match="--when"):
        retrain(SPEC, state, "sometimes")


def test_drift_computed_from_the_champions_logged_inputs(state: Settings, tmp_path: Path) -> None:
    registry.configure(state)
    champion = str(registry.champion_version(SPEC.name).version)  # type: ignore[union-attr]
    frame = synthetic.make_frame(300, seed=4)
    frame["x1"] = frame["x1"] + 3.0  # far outside the training rows' x1
    logs = tmp_path / "logs"
    plog = PredictionLog(logs, SPEC.name)
    values = {n: frame[n].astype(object).where(frame[n].notna(), None).tolist() for n in SPEC.feature_names}
    plog.submit("b", champion, "compiled", values, [{"probability": 0.5}] * 300, batch=True)
    plog.submit("b", "99", "compiled", values, [{"probability": 0.5}] * 300, batch=True, shadow=True)
    plog.close()
    result = retrain(SPEC, state.model_copy(update={"prediction_log_dir": logs}), "drift")
    assert result["triggered"], result["reason"]
    assert "x1" in result["reason"] and "over 300 rows" in result["reason"]  # shadow lines not counted


def test_cli_exit_codes_on_bad_input(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from portfolio.cli import app as cli_app
    from tests.support.live import state_env

    env = state_env(make_settings(tmp_path / "state"))
    runner = CliRunner()
    res = runner.invoke(cli_app, ["promote", "bankchurn"], env=env)
    assert res.exit_code == 2 and "VERSION or --if-better" in res.output
    res = runner.invoke(cli_app, ["promote", "bankchurn", "3", "--if-better"], env=env)
    assert res.exit_code == 2 and "VERSION or --if-better" in res.output
    res = runner.invoke(cli_app, ["promote", "bankchurn", "--if-better"], env=env)
    assert res.exit_code == 2 and "no @champion registered" in res.output
    res = runner.invoke(cli_app, ["promote", "bankchurn", "--if-better", "--since", "yesterday"], env=env)
    assert res.exit_code == 2 and "--since" in res.output
    res = runner.invoke(
        cli_app, ["retrain", "bankchurn", "--when", "drift", "--report", "none.json"], env=env
    )
    assert res.exit_code == 2 and "file not found" in res.output
    res = runner.invoke(cli_app, ["retrain", "all", "--when", "drift", "--report", "none.json"], env=env)
    assert res.exit_code == 2 and "one service" in res.output
    res = runner.invoke(cli_app, ["retrain", "bankchurn", "--when", "sometimes"], env=env)
    assert res.exit_code == 2
