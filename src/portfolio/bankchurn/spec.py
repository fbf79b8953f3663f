"""BankChurn: the schema, the candidate models and the decision policy. Everything else
(training, tracking, serving, batch) is the shared core."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from xgboost import XGBClassifier

from portfolio.core.features import tabular_preprocessor
from portfolio.core.schema import Field
from portfolio.core.spec import ServiceSpec, ThresholdPolicy

FIELDS: tuple[Field, ...] = (
    Field("CreditScore", "int", "Credit score", min=300, max=900, example=619),
    Field("Geography", "category", "Country", categories=("France", "Germany", "Spain"), example="France"),
    Field("Gender", "category", "Gender", categories=("Female", "Male"), example="Female"),
    Field("Age", "int", "Age in years", min=18, max=100, example=42),
    Field("Tenure", "int", "Years as a customer (may be unknown)", min=0, max=10, nullable=True, example=2),
    Field("Balance", "float", "Account balance", min=0, max=10_000_000, example=0.0),
    Field("NumOfProducts", "int", "Number of bank products held", min=1, max=4, example=1),
    Field("HasCrCard", "int", "Has a credit card (0/1)", min=0, max=1, example=1),
    Field("IsActiveMember", "int", "Active member (0/1)", min=0, max=1, example=1),
    Field("EstimatedSalary", "float", "Estimated yearly salary", min=0, max=10_000_000, example=101348.88),
)
NUMERIC = [f.name for f in FIELDS if f.kind in ("int", "float")]
CATEGORICAL = [f.name for f in FIELDS if f.kind == "category"]


def xgboost_pipeline(params: Mapping[str, Any]) -> Pipeline:
    p = {
        "n_estimators": 400,
        "learning_rate": 0.029,
        "max_depth": 3,
        "subsample": 0.7,
        "colsample_bytree": 0.8,
        "min_child_weight": 5,
        "reg_lambda": 1.0,
        "reg_alpha": 0.1,
        "gamma": 0.5,
        # Class imbalance (~20% churners) handled by weighting positives (≈ negatives/positives).
        "scale_pos_weight": 3.9,
        "n_jobs": 1,
    } | dict(params)
    return Pipeline(
        [
            ("prep", tabular_preprocessor(NUMERIC, CATEGORICAL)),
            ("model", XGBClassifier(eval_metric="logloss", random_state=42, **p)),
        ]
    )


def logistic_pipeline(params: Mapping[str, Any]) -> Pipeline:
    p = {"C": 1.0, "max_iter": 1000, "class_weight": "balanced"} | dict(params)
    return Pipeline(
        [
            ("prep", tabular_preprocessor(NUMERIC, CATEGORICAL, scale=True)),
            ("model", LogisticRegression(**p)),
        ]
    )


SPEC = ServiceSpec(
    name="bankchurn",
    title="BankChurn Predictor",
    task="classification",
    data_file="Churn_Modelling.csv",
    target="Exited",
    fields=FIELDS,
    candidates={"xgboost": xgboost_pipeline, "logistic_baseline": logistic_pipeline},
    ignored_columns=("RowNumber", "CustomerId", "Surname"),
    threshold_policy=ThresholdPolicy("max_f1"),
    fairness_groups=("Gender", "Geography"),
    description="Probability that a retail-bank customer closes their account.",
    intended_use=(
        "Rank existing customers by churn risk so retention teams can contact the riskiest first. "
        "Decision support for people, not an automated decision about a customer."
    ),
    limitations=(
        "Trained on ~8.5k customers from three European countries (France, Germany, Spain); "
        "scores for other markets are out of distribution. Probabilities are shifted upwards by "
        "class weighting, so read them as a ranking score rather than a calibrated frequency. "
        "Gender and Geography are inputs: check the per-group report before acting on a segment."
    ),
)
