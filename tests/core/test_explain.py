"""Explanations: POST /explain on the real BankChurn champion (TreeSHAP), the sampling Shapley
explainer (exact on a linear model, additive on anything), every registered service's own model,
and the global importance logged at training time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from sklearn.model_selection import FixedThresholdClassifier
from sklearn.pipeline import Pipeline
from xgboost import XGBRegressor

from portfolio.bankchurn.spec import SPEC as BANK
from portfolio.core import registry
from portfolio.core.data import load_training_data
from portfolio.core.estimators import IntervalRegressor
from portfolio.core.explain.shapley import SAMPLING_SHAPLEY, TREE_SHAP, column_sources, explain_frame
from portfolio.core.explain.substitution import ReferenceProfile, find_step, top_factors_columns
from portfolio.core.features import tabular_preprocessor
from portfolio.core.monitoring.reference import DriftReference, typed_frame
from portfolio.core.registry import LoadedModel
from portfolio.core.serving.api import create_app
from portfolio.core.serving.inference import Predictor
from portfolio.core.settings import Settings
from portfolio.core.training.train import load_params
from portfolio.services import SERVICES
from tests.conftest import make_settings
from tests.support import synthetic
from tests.support.helpers import wait_ready


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def additivity_gap(body: dict[str, Any], target: float) -> float:
    total = body["base_value"] + sum(c["contribution"] for c in body["contributions"])
    return abs(total - target)


# ------------------------------------------------------------------------------ POST /explain
def test_explain_bankchurn_records_add_up_to_the_predicted_log_odds(
    bank_client: TestClient, data_dir: Path
) -> None:
    raw = pd.read_csv(data_dir / BANK.data_file)
    rows = pd.concat([raw.sample(15, random_state=2), raw[raw["Tenure"].isna()].head(3)])
    records = json.loads(rows[BANK.feature_names].to_json(orient="records"))
    for record in records:
        r = bank_client.post("/explain", json=record)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["method"] == TREE_SHAP and body["output"] == "log_odds"
        names = [c["feature"] for c in body["contributions"]]
        assert sorted(names) == sorted(BANK.feature_names)  # original fields, no one-hot columns
        predicted = bank_client.post("/predict", json=record).json()
        assert body["probability"] == pytest.approx(predicted["probability"], abs=1e-12)
        assert body["prediction"] == predicted["prediction"] and body["model_version"] == "1"
        assert additivity_gap(body, logit(predicted["probability"])) < 1e-3
        assert abs(body["output_value"] - logit(predicted["probability"])) < 1e-3
        sizes = [abs(c["contribution"]) for c in body["contributions"]]
        assert sizes == sorted(sizes, reverse=True)
        assert {c["feature"]: c["value"] for c in body["contributions"]} == record


def test_explain_points_at_the_features_that_matter(bank_client: TestClient) -> None:
    """Same customer at 25 and at 60: Age must carry most of the difference in log-odds."""
    base = {f.name: f.example for f in BANK.fields} | {"IsActiveMember": 0, "NumOfProducts": 1}
    young = bank_client.post("/explain", json=base | {"Age": 25}).json()
    old = bank_client.post("/explain", json=base | {"Age": 60}).json()
    before = {b["feature"]: b["contribution"] for b in young["contributions"]}
    after = {b["feature"]: b["contribution"] for b in old["contributions"]}
    assert after["Age"] > 0.5 > before["Age"]
    # Only Age changed, so its shift must be most of the change in log-odds (the rest is what
    # its interactions move in the other features' contributions), and the largest shift.
    shifts = {name: after[name] - before[name] for name in after}
    total = old["output_value"] - young["output_value"]
    assert total > 0 and shifts["Age"] >= 0.75 * total
    assert max(shifts, key=lambda name: abs(shifts[name])) == "Age"


def test_explain_rejects_bad_input_naming_the_field(bank_client: TestClient) -> None:
    record = {f.name: f.example for f in BANK.fields}
    r = bank_client.post("/explain", json=record | {"Age": 300})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "Age"
    r = bank_client.post("/explain", json={k: v for k, v in record.items() if k != "Geography"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "Geography"


def test_explain_through_the_api_with_the_sampling_method(synth_trained: Settings) -> None:
    """A non-tree champion: the background rows come from the reference stored with the model."""
    with TestClient(create_app(synthetic.CLASSIFIER, synth_trained)) as c:
        wait_ready(c)
        record = {"x1": 1.5, "x2": None, "color": "red", "noise": -0.3}
        body = c.post("/explain", json=record).json()
        assert body["method"] == SAMPLING_SHAPLEY
        assert additivity_gap(body, logit(body["probability"])) < 1e-6
        contrib = {b["feature"]: b["contribution"] for b in body["contributions"]}
        assert contrib["x1"] > abs(contrib["noise"])  # the signal, not the noise
        again = c.post("/explain", json=record).json()
        assert again["contributions"] == body["contributions"]  # deterministic


# ------------------------------------------------------------------------ the sampling method
def _synthetic_logistic() -> tuple[Any, pd.DataFrame]:
    frame = synthetic.make_frame(400, seed=3)
    X = typed_frame(frame, synthetic.FIELDS)
    model = synthetic.logistic({}).fit(X, frame["label"])
    return model, X


def test_sampling_shapley_is_exact_on_a_linear_model() -> None:
    """With one background row, a logistic model's Shapley value of a field is its coefficients
    times (encoded row - encoded background) on that field's columns, whatever the order."""
    model, X = _synthetic_logistic()
    rows, background = X.iloc[:5], X.iloc[[10]]
    exp = explain_frame("classification", model, rows, background=background, n_pairs=8)
    assert exp.method == SAMPLING_SHAPLEY
    prep, lr = model.named_steps["prep"], model.named_steps["model"]
    sources = column_sources(prep)
    delta = (prep.transform(rows) - prep.transform(background)) * lr.coef_[0]
    for field in X.columns:
        cols = [j for j, s in enumerate(sources) if s == field]
        np.testing.assert_allclose(exp.contributions[field], delta[:, cols].sum(axis=1), atol=1e-9)
    p = model.predict_proba(rows)[:, 1]
    np.testing.assert_allclose(exp.base + exp.contributions.sum(axis=1), np.log(p / (1 - p)), atol=1e-9)


def test_column_sources_follow_imputer_indicators_and_one_hot() -> None:
    model, X = _synthetic_logistic()
    prep = model.named_steps["prep"]
    sources = column_sources(prep)
    names = list(prep.get_feature_names_out())
    assert len(sources) == len(names) == prep.transform(X.head(2)).shape[1]
    for src, name in zip(sources, names, strict=True):
        assert src in name  # x2, missingindicator_x2, color_red, ...
    assert sources.count("color") == 3 and sources.count("x2") == 2


def test_regressors_add_up_in_price() -> None:
    frame = synthetic.make_frame(500, seed=4)
    X = typed_frame(frame, synthetic.FIELDS)
    y = frame["price"]
    # Log-target linear model: sampling method, additive in price (not in log-price).
    linear = IntervalRegressor(synthetic.linear({}), -0.2, 0.2).fit(X, y)
    ref = DriftReference.from_frame(synthetic.REGRESSOR, X)
    exp = explain_frame("regression", linear, X.head(4), background=ref.sample_frame(synthetic.REGRESSOR))
    assert exp.method == SAMPLING_SHAPLEY and exp.output == "prediction"
    np.testing.assert_allclose(exp.base + exp.contributions.sum(axis=1), linear.predict(X.head(4)), atol=1e-6)
    # XGBoost regressor on field columns: exact TreeSHAP, in price.
    num, cat = ["x1", "x2", "noise"], ["color"]
    xgb = Pipeline(
        [("prep", tabular_preprocessor(num, cat)), ("model", XGBRegressor(n_estimators=50, max_depth=3))]
    )
    tree = IntervalRegressor(xgb, -0.2, 0.2).fit(X, y)
    exp = explain_frame("regression", tree, X.head(20))
    assert exp.method == TREE_SHAP
    np.testing.assert_allclose(exp.base + exp.contributions.sum(axis=1), tree.predict(X.head(20)), rtol=1e-5)
    assert list(exp.contributions.columns) == synthetic.REGRESSOR.feature_names


# ------------------------------------------------------------------ every registered service
@pytest.mark.parametrize("service", list(SERVICES))
def test_every_service_model_is_explained_additively_in_field_names(
    service: str, data_dir: Path, tmp_path: Path
) -> None:
    """The service's first candidate, fitted on 1,500 real rows and wrapped as training wraps
    it, explained through the serving predictor (compiled path when available)."""
    spec = SERVICES[service]
    settings = make_settings(tmp_path, data_dir=data_dir)
    ds = load_training_data(spec, settings)
    idx = ds.X.sample(min(1500, len(ds.X)), random_state=0).index
    X, y = ds.X.loc[idx].reset_index(drop=True), ds.y.loc[idx].reset_index(drop=True)
    name, builder = next(iter(spec.candidates.items()))
    pipe = builder(dict((load_params(spec.name, settings).get("candidates") or {}).get(name) or {}))
    if spec.task == "classification":
        model: Any = FixedThresholdClassifier(pipe, threshold=0.5, response_method="predict_proba").fit(X, y)
    else:
        model = IntervalRegressor(pipe, -0.2, 0.2).fit(X, y)
    predictor = Predictor(spec, LoadedModel(spec.name, "0", model, "", None))
    background = DriftReference.from_frame(spec, X).sample_frame(spec)
    rows = X.tail(3)
    exp = explain_frame(spec.task, model, rows, score=predictor.scores_frame, background=background)
    assert list(exp.contributions.columns) == spec.feature_names
    scores = predictor.scores_frame(rows)
    target = np.log(scores / (1 - scores)) if spec.task == "classification" else scores
    np.testing.assert_allclose(exp.base + exp.contributions.sum(axis=1), target, atol=1e-3)
    assert np.abs(exp.contributions.to_numpy()).sum() > 0
    if find_step(model, ReferenceProfile) is not None:  # e.g. telecom: its own reference customer
        exp = explain_frame(spec.task, model, rows, score=predictor.scores_frame)
        np.testing.assert_allclose(exp.base + exp.contributions.sum(axis=1), target, atol=1e-3)


# ------------------------------------------------------------------- importance at training
def test_global_importance_is_logged_at_training(bank_state: Settings, tmp_path: Path) -> None:
    loaded = registry.load_champion(BANK, bank_state)
    client = MlflowClient()
    paths = {a.path for a in client.list_artifacts(loaded.run_id)}
    assert {"feature_importance.json", "explanation_importance.json"} <= paths  # dashboard reads the first
    plots = {a.path for a in client.list_artifacts(loaded.run_id, "plots")}
    assert {"plots/importance.png", "plots/explanation_importance.png"} <= plots
    local = client.download_artifacts(loaded.run_id, "explanation_importance.json", str(tmp_path))
    data = json.loads(Path(local).read_text())
    assert data["method"] == TREE_SHAP and set(data["importance"]) == set(BANK.feature_names)
    top = sorted(data["importance"], key=data["importance"].get, reverse=True)[:3]
    assert "Age" in top  # the strongest churn driver in this data


def test_reference_substitutions_of_one_request_equal_those_of_a_batch() -> None:
    """A request (few rows: list-built variants) and a batch (np.tile) give the same scores and
    contributions, missing values and a missing reference included."""
    from portfolio.core.explain.substitution import reference_scores_and_contributions

    rng = np.random.default_rng(3)
    n = 70
    amount = rng.normal(size=n)
    amount[::7] = np.nan
    plan = rng.choice(np.array(["basic", "plus", None], dtype=object), size=n)
    calls = rng.integers(0, 9, size=n)
    cols = {"amount": amount, "plan": plan, "calls": calls}
    reference = {"amount": 0.25, "plan": None, "calls": 4}

    def score(c: dict[str, np.ndarray]) -> np.ndarray:
        plan_part = np.array([{"basic": 0.3, "plus": -0.4}.get(v, 0.1) for v in c["plan"]])
        z = np.nan_to_num(c["amount"], nan=-0.5) + plan_part + 0.1 * c["calls"]
        return 1.0 / (1.0 + np.exp(-z))

    batch = reference_scores_and_contributions(score, cols, reference)
    for i in range(n):
        one = reference_scores_and_contributions(score, {k: v[i : i + 1] for k, v in cols.items()}, reference)
        np.testing.assert_allclose(one[0], batch[0][i : i + 1], rtol=0, atol=1e-15)
        np.testing.assert_allclose(one[1], batch[1][i : i + 1], rtol=0, atol=1e-12)
    assert np.abs(batch[1]).max() > 0.1  # substitutions do move the score


def _top_factors_one_by_one(
    values: np.ndarray, names: list[str], cols: dict[str, np.ndarray], k: int
) -> list[str]:
    """The plain definition of top_factors' text, one row and one value at a time."""
    texts = []
    for i, row in enumerate(values):
        order = np.argsort(-np.abs(row), kind="stable")[:k]
        parts = []
        for j in order:
            if abs(row[j]) < 1e-6:
                continue
            value = np.asarray(cols[names[j]]).tolist()[i]
            shown = "missing" if value is None or (isinstance(value, float) and np.isnan(value)) else value
            shown = f"{shown:g}" if isinstance(shown, float) else str(shown)
            parts.append(f"{names[j]}={shown} ({row[j]:+.2f})")
        texts.append("; ".join(parts))
    return texts


@pytest.mark.parametrize("n", [400, 60], ids=["batch", "request"])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_top_factors_text_equals_formatting_each_value(k: int, n: int) -> None:
    """The texts of a batch (vectorised: each distinct label and hundredth formatted once) and of
    a request (value by value) equal formatting every value: rounding ties (x.xx5 in binary is
    just above or below), -0.00, contributions too small to list, missing numbers and texts,
    repeated and distinct values, 1 beside True."""
    rng = np.random.default_rng(5)
    cols = {
        "price": np.where(rng.random(n) < 0.1, np.nan, np.round(rng.normal(50, 20, n), 1)),
        "plan": np.array(rng.choice(["a", "b", None], n).tolist(), dtype=object),
        "flag": np.array([[1, True, "yes"][i] for i in rng.integers(0, 3, n)], dtype=object),
        # -0.0 beside 0.0: equal values that print differently ("-0", "0")
        "count": rng.integers(0, 5, n).astype(np.float64) * rng.choice([1.0, -1.0], n),
        "rare": np.array([f"v{i}" for i in range(n)], dtype=object),
        "day": np.arange(n).astype("datetime64[D]").astype("datetime64[ns]"),
    }
    names = list(cols)
    values = np.round(rng.normal(0, 1.5, (n, len(names))), 3) + rng.choice(
        [0.0005, -0.0005, 0.0], (n, len(names))
    )
    values[::5, 1] = 1e-8  # at the reference
    values[1::7, :] = 1e-8
    values[1::7, 2] = -0.001  # listed alone, printed as -0.00
    values[2::9, :] = [1.005, 2.675, -0.125, 0.015, -1e-7, 0.0]  # ties in decimal, not in binary
    got = top_factors_columns(values, names, cols, k=k)
    assert got == _top_factors_one_by_one(values, names, cols, k)
    assert any("flag=1 " in t for t in got) and any("flag=True " in t for t in got)
    assert any("(-0.00)" in t for t in got) and any("=missing" in t for t in got)
    if k >= 3:
        assert any("count=-0 " in t for t in got) and any("count=0 " in t for t in got)
