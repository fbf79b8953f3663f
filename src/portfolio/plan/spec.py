"""Plan Recommendation: a subscriber's monthly usage -> the tariff that fits (1 = Ultra, 0 = Smart).
The schema, the candidate models and the decision policy; everything else is the shared core."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from xgboost import XGBClassifier

from portfolio.core.features import tabular_preprocessor
from portfolio.core.schema import Field
from portfolio.core.spec import ServiceSpec, ThresholdPolicy

FIELDS: tuple[Field, ...] = (
    Field("calls", "float", "Calls made in the month", min=0, max=10_000, example=40.0),
    Field("minutes", "float", "Total call minutes in the month", min=0, max=44_640, example=311.9),
    Field("messages", "float", "Text messages sent in the month", min=0, max=100_000, example=83.0),
    Field("mb_used", "float", "Mobile data used in the month (MB)", min=0, max=10_000_000, example=19915.42),
)
NUMERIC = [f.name for f in FIELDS]
TARIFFS = np.array(["Smart", "Ultra"], dtype=object)


def xgboost_pipeline(params: Mapping[str, Any]) -> Pipeline:
    p = {"n_estimators": 300, "learning_rate": 0.03, "max_depth": 3, "subsample": 0.8} | dict(params)
    return Pipeline(
        [
            ("prep", tabular_preprocessor(NUMERIC, [])),
            ("model", XGBClassifier(eval_metric="logloss", random_state=42, n_jobs=1, **p)),
        ]
    )


def random_forest_pipeline(params: Mapping[str, Any]) -> Pipeline:
    p = {"n_estimators": 300, "max_depth": 8, "n_jobs": 1} | dict(params)
    return Pipeline(
        [("prep", tabular_preprocessor(NUMERIC, [])), ("model", RandomForestClassifier(random_state=42, **p))]
    )


def logistic_pipeline(params: Mapping[str, Any]) -> Pipeline:
    p = {"C": 1.0, "max_iter": 1000} | dict(params)
    return Pipeline(
        [("prep", tabular_preprocessor(NUMERIC, [], scale=True)), ("model", LogisticRegression(**p))]
    )


def tariff(
    cols: Mapping[str, Any], proba: np.ndarray, predictor: Any, explain: bool = True
) -> dict[str, Any]:
    """The recommended tariff's name beside ``prediction`` (same threshold)."""
    return {"tariff": TARIFFS[(proba >= predictor.threshold).astype(int)]}


SPEC = ServiceSpec(
    name="plan",
    title="Plan Recommendation",
    task="classification",
    data_file="users_behavior.csv",
    target="is_ultra",
    fields=FIELDS,
    candidates={
        "xgboost": xgboost_pipeline,
        "random_forest": random_forest_pipeline,
        "logistic_baseline": logistic_pipeline,
    },
    selection_metric="accuracy",
    threshold_policy=ThresholdPolicy("max_accuracy"),
    extra_outputs=tariff,
    extra_output_columns=("tariff",),
    description="Which tariff fits a subscriber: probability of Ultra (1) rather than Smart (0).",
    intended_use=(
        "Recommend the tariff to offer a subscriber of the legacy plans from a month of usage. "
        "Decision support for offers, not a change of anyone's contract."
    ),
    limitations=(
        "Trained on ~2.2k subscribers' monthly usage (calls, minutes, messages, data) of one operator; "
        "the label is the tariff they chose, not the one that would have served them best. Usage "
        "patterns of other markets or later years are out of distribution."
    ),
)
