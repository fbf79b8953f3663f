"""TelecomAI end to end on the real data: train once (session fixture), then the registry, the
threshold policy, the batch CLI, evaluate and the real API process."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import VotingClassifier
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from portfolio.core import registry
from portfolio.core.data import load_training_data
from portfolio.core.schema import validate_frame
from portfolio.core.serving.inference import Predictor
from portfolio.core.training.train import split
from portfolio.telecom.spec import MIN_PRECISION, MIN_RECALL, SPEC
from tests.core.test_serving_imports import assert_serving_imports_only
from tests.support.helpers import ROOT
from tests.support.live import TrainedService, live_api, warm_worker_modules
from tests.support.parity import assert_fast_path_parity, assert_served_as_in_process
from tests.telecom.conftest import DATA_FILE

pytestmark = pytest.mark.integration
PORTFOLIO = str(ROOT / ".venv" / "bin" / "portfolio")


def _cli(trained: TrainedService, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PORTFOLIO, *args],
        cwd=ROOT,
        env={**os.environ, **trained.env()},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_training_registers_a_loadable_soft_voting_champion(telecom_trained: TrainedService) -> None:
    out = telecom_trained.outcome
    assert out.alias == "champion" and out.best == "soft_voting"
    # Well inside the time budget of `portfolio train telecom` (generous for a loaded CI box).
    assert telecom_trained.seconds < 600
    # Blank TotalCharges rows are kept (parsed + imputed), nothing else is excluded.
    assert out.data_report["rows_used"] == out.data_report["rows_in_file"]
    assert out.data_report["schema"]["invalid_rows"] == 0

    loaded = registry.load_champion(SPEC, telecom_trained.settings)  # skops with the allow-list
    assert loaded.version == out.version
    assert loaded.threshold == pytest.approx(out.threshold)
    pipe = loaded.model.estimator_
    assert "customerID" not in pipe.named_steps["reference"].feature_names_in_
    vote = pipe.named_steps["vote"]
    assert isinstance(vote, VotingClassifier) and vote.voting == "soft"
    assert len(vote.estimators_) >= 3


def test_compiled_fast_path_matches_the_registered_model(telecom_trained: TrainedService) -> None:
    assert_fast_path_parity(SPEC, telecom_trained.settings, DATA_FILE.parent)


def test_a_warm_worker_answers_requests_without_numba(telecom_trained: TrainedService) -> None:
    """A TelecomAI request scores its row and its explanation's 19 variants: 20 rows, walked in
    numpy (fastpath/trees.py), so a worker that answers /predict holds no numba (~110 MB)."""
    assert_serving_imports_only(warm_worker_modules(telecom_trained.settings, "telecom"), "telecom")


def _bootstrap_sd(
    y: np.ndarray, flagged: np.ndarray, proba: np.ndarray, rounds: int = 1000
) -> dict[str, float]:
    """Sampling sd of recall, precision and ROC-AUC on these rows: rows resampled with
    replacement ``rounds`` times."""
    rng = np.random.default_rng(0)
    draws: dict[str, list[float]] = {"recall": [], "precision": [], "roc_auc": []}
    for _ in range(rounds):
        i = rng.integers(0, len(y), len(y))
        draws["recall"].append(recall_score(y[i], flagged[i]))
        draws["precision"].append(precision_score(y[i], flagged[i]))
        draws["roc_auc"].append(roc_auc_score(y[i], proba[i]))
    return {k: float(np.std(v)) for k, v in draws.items()}


def test_stored_threshold_reaches_the_targets_on_the_holdout(telecom_trained: TrainedService) -> None:
    """The champion at its stored threshold, on the hold-out rows it never saw: recall ≥ 0.80,
    precision ≥ 0.50 and ROC-AUC ≥ 0.855 (the issue's targets on unseen customers), each less two
    of its sampling sds on this hold-out (~1,400 customers, measured here by bootstrap)."""
    settings = telecom_trained.settings
    _, X_test, _, y_test = split(SPEC, load_training_data(SPEC, settings), settings)
    model = registry.load_champion(SPEC, settings).model
    y = y_test.to_numpy().astype(int)
    proba = model.predict_proba(X_test)[:, 1]
    flagged = model.predict(X_test).astype(int)  # the stored threshold applied by the model itself
    assert ((proba >= telecom_trained.outcome.threshold) == flagged.astype(bool)).all()
    measured = {
        "recall": recall_score(y, flagged),
        "precision": precision_score(y, flagged),
        "roc_auc": roc_auc_score(y, proba),
    }
    sd = _bootstrap_sd(y, flagged, proba)
    print(f"TelecomAI hold-out ({len(y)} rows): {measured}, bootstrap sd {sd}")
    for metric, target in (("recall", 0.80), ("precision", 0.50), ("roc_auc", 0.855)):
        assert measured[metric] >= target - 2 * sd[metric], (metric, measured[metric], sd[metric])
        # The training run's own hold-out figures are these.
        assert telecom_trained.outcome.test[metric]["value"] == pytest.approx(measured[metric])
    # Out of fold, the threshold meets both targets with room (the widest smaller margin; spec.py
    # says why).
    cv = telecom_trained.outcome.cv
    assert cv["recall"]["value"] > MIN_RECALL >= 0.80
    assert cv["precision"]["value"] > MIN_PRECISION >= 0.50


def _raw_text() -> pd.DataFrame:
    """The raw file exactly as text (so tests can plant bad cells in any column)."""
    return pd.read_csv(DATA_FILE, dtype=str, keep_default_na=False)


def _sample_input(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    raw = _raw_text()
    new = raw.index[raw["TotalCharges"].str.strip() == ""][:2]  # tenure-0, blank TotalCharges
    assert len(new) == 2 and (raw.loc[new, "tenure"] == "0").all()
    rows = raw.loc[[*raw.index[:30], *new]].reset_index(drop=True)
    rows.loc[5, "Contract"] = "Weekly"
    rows.loc[9, "MonthlyCharges"] = "abc"
    rows.loc[12, "tenure"] = ""
    path = tmp_path / "in.csv"
    rows.to_csv(path, index=False)  # with customerID and Churn, as exported from the source
    return path, rows


def test_predict_cli_one_row_per_input_row_in_order(telecom_trained: TrainedService, tmp_path: Path) -> None:
    path, rows = _sample_input(tmp_path)
    result = _cli(telecom_trained, "predict", "telecom", str(path), "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 0, result.stderr
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert len(out) == len(rows)
    assert list(out.columns) == ["probability", "prediction", "at_risk", "risk_tier", "top_factors", "error"]

    bad = {5: "Contract", 9: "MonthlyCharges", 12: "tenure"}
    for i, field in bad.items():
        assert field in out.loc[i, "error"] and out.loc[i, "probability"] == ""
    good = out.drop(index=list(bad))
    assert (good["error"] == "").all()
    # Same order: each output row equals an in-process prediction of the same input row.
    predictor = Predictor(SPEC, registry.load_champion(SPEC, telecom_trained.settings))
    typed = validate_frame(rows, SPEC.fields).frame.drop(index=list(bad))
    expected = predictor.predict_frame(typed)
    assert good["probability"].astype(float).to_numpy() == pytest.approx(expected["probability"].to_numpy())
    assert good["risk_tier"].tolist() == expected["risk_tier"].tolist()
    at_risk = good["at_risk"].str.lower().map({"true": True, "false": False})
    assert at_risk.tolist() == expected["at_risk"].tolist()
    assert (good["prediction"].astype(int) == at_risk.astype(int)).all()
    assert set(good["risk_tier"]) <= {"low", "medium", "high"}
    for text in good["top_factors"]:
        parts = text.split("; ")
        assert len(parts) == 3
        assert all(p.split("=")[0] in SPEC.feature_names for p in parts)
    # The blank-TotalCharges customers (last two rows) are scored, not rejected.
    assert (out.tail(2)["error"] == "").all() and (out.tail(2)["probability"] != "").all()

    # --no-explain: the same scores, tiers and errors, with top_factors left empty.
    quick = _cli(
        telecom_trained, "predict", "telecom", str(path), "--output", str(tmp_path / "q.csv"), "--no-explain"
    )
    assert quick.returncode == 0, quick.stderr
    q = pd.read_csv(tmp_path / "q.csv", keep_default_na=False)
    assert list(q.columns) == list(out.columns) and (q["top_factors"] == "").all()
    same = ["top_factors", "probability"]
    pd.testing.assert_frame_equal(q.drop(columns=same), out.drop(columns=same))
    # Within the fast path's parity bound (the two runs score different numbers of rows at once).
    scored = out["probability"] != ""
    assert (q["probability"] != "").tolist() == scored.tolist()
    assert q.loc[scored, "probability"].astype(float).to_numpy() == pytest.approx(
        out.loc[scored, "probability"].astype(float).to_numpy(), abs=1e-6
    )


def test_evaluate_cli_on_a_labeled_file(telecom_trained: TrainedService, tmp_path: Path) -> None:
    raw = _raw_text().head(400)
    raw.loc[3, "Churn"] = "unknown"
    path = tmp_path / "labeled.csv"
    raw.to_csv(path, index=False)
    result = _cli(telecom_trained, "evaluate", "telecom", str(path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows_evaluated"] == 399 and report["rows_excluded"] == 1
    assert report["threshold"] == pytest.approx(telecom_trained.outcome.threshold)
    m = report["metrics"]
    assert 0.5 < m["roc_auc"]["value"] <= 1 and m["recall"]["ci_low"] <= m["recall"]["value"]


@pytest.fixture(scope="module")
def api(telecom_trained: TrainedService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `portfolio serve telecom` process (uvicorn) on a free loopback port."""
    with live_api("telecom", telecom_trained.env(), tmp_path_factory.mktemp("telecom-api")) as served:
        yield served.url


def _record() -> dict[str, object]:
    return {f.name: f.example for f in SPEC.fields}


def test_api_predict_returns_customer_intelligence(api: str, telecom_trained: TrainedService) -> None:
    r = httpx.post(f"{api}/predict", json=_record(), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert 0 < body["probability"] < 1
    assert body["model_version"] == telecom_trained.outcome.version
    assert body["threshold"] == pytest.approx(telecom_trained.outcome.threshold)
    assert body["at_risk"] is (body["probability"] >= body["threshold"])
    assert body["prediction"] == int(body["at_risk"])
    assert body["risk_tier"] in ("low", "medium", "high")
    factors = body["top_factors"].split("; ")
    assert len(factors) == 3 and all(f.split("=")[0] in SPEC.feature_names for f in factors)
    # The example is a one-month, month-to-month, electronic-check customer: flagged.
    assert body["at_risk"] is True

    # A new customer without TotalCharges (null) is scored; a loyal two-year customer is low risk.
    new = _record() | {"tenure": 0, "TotalCharges": None}
    loyal = _record() | {
        "tenure": 70,
        "Contract": "Two year",
        "PaymentMethod": "Credit card (automatic)",
        "TotalCharges": 2000.0,
    }
    r = httpx.post(f"{api}/predict/batch", json={"records": [new, loyal]}, timeout=30)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert preds[1]["risk_tier"] == "low" and preds[1]["probability"] < preds[0]["probability"]

    info = httpx.get(f"{api}/model", timeout=10).json()
    assert info["outputs"] == ["probability", "prediction", "at_risk", "risk_tier", "top_factors"]
    assert info["threshold"] == pytest.approx(telecom_trained.outcome.threshold)


def test_api_explain_false_skips_top_factors_only(api: str) -> None:
    """`?explain=false`: identical scores and tiers, top_factors null; a bad value is a 422 naming
    `query.explain`."""
    records = [_record(), _record() | {"tenure": 70, "Contract": "Two year"}]
    full = httpx.post(f"{api}/predict/batch", json={"records": records}, timeout=30).json()["predictions"]
    quick = httpx.post(f"{api}/predict/batch?explain=false", json={"records": records}, timeout=30)
    assert quick.status_code == 200, quick.text
    for f, q in zip(full, quick.json()["predictions"], strict=True):
        assert isinstance(f["top_factors"], str) and q["top_factors"] is None
        # Within the fast path's parity bound: 2 rows walk the trees one row at a time, the 40
        # rows of 2 customers with their substitutions in a block of rows.
        assert q["probability"] == pytest.approx(f["probability"], abs=1e-6)
        skip = ("top_factors", "probability")
        assert {k: v for k, v in q.items() if k not in skip} == {k: v for k, v in f.items() if k not in skip}
    one = httpx.post(f"{api}/predict?explain=false", json=_record(), timeout=30).json()
    assert one["top_factors"] is None and one["probability"] == pytest.approx(
        full[0]["probability"], abs=1e-6
    )
    bad = httpx.post(f"{api}/predict?explain=maybe", json=_record(), timeout=30)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "query.explain"


def test_api_rejects_unknown_category_naming_the_field(api: str) -> None:
    r = httpx.post(f"{api}/predict", json=_record() | {"Contract": "Weekly"}, timeout=10)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [d["field"] for d in detail] == ["Contract"]
    r = httpx.post(f"{api}/predict", json=_record() | {"customerID": "7590-VHVEG"}, timeout=10)
    assert r.status_code == 422 and r.json()["detail"][0] == {
        "field": "customerID",
        "reason": "unknown field",
    }
    r = httpx.post(f"{api}/predict", json=_record() | {"MonthlyCharges": "lots"}, timeout=10)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "MonthlyCharges"
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200


def test_served_worker_without_pyarrow_answers_as_in_process(
    api: str, telecom_trained: TrainedService, data_dir: Path
) -> None:
    """With the per-customer explanations (top_factors name the categories' values)."""
    assert_served_as_in_process(api, SPEC, telecom_trained.settings, data_dir)
