"""Small synthetic services for testing the core without the real data: a classifier and a
regressor built only from core parts, exactly as a real service would be."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline

from portfolio.core.features import tabular_preprocessor
from portfolio.core.schema import Field
from portfolio.core.spec import ServiceSpec, ThresholdPolicy

FIELDS = (
    Field("x1", "float", "signal", min=-10, max=10, example=0.5),
    Field("x2", "int", "count", min=0, max=100, nullable=True, example=3),
    Field("color", "category", "colour", categories=("red", "green", "blue"), example="red"),
    Field("noise", "float", "pure noise", min=-10, max=10, example=0.1),
)


def make_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(0, 1, n)
    x2 = rng.integers(0, 100, n).astype(float)
    x2[rng.random(n) < 0.1] = np.nan
    color = rng.choice(["red", "green", "blue"], n)
    noise = rng.normal(0, 1, n)
    logit = 1.8 * x1 + (color == "red") * 1.0 - 1.2
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    price = np.exp(8 + 0.5 * x1 + 0.3 * (color == "blue") + rng.normal(0, 0.2, n))
    return pd.DataFrame(
        {"x1": x1, "x2": x2, "color": color, "noise": noise, "label": y, "price": price.round(2)}
    )


def write_csv(path: Path, n: int = 600, seed: int = 0) -> Path:
    make_frame(n, seed).to_csv(path, index=False)
    return path


def _columns(params: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    use = list(params.get("features", ["x1", "x2", "color", "noise"]))
    return [c for c in use if c != "color"], [c for c in use if c == "color"]


def logistic(params: Mapping[str, Any]) -> Pipeline:
    num, cat = _columns(params)
    prep: ColumnTransformer = tabular_preprocessor(num, cat, scale=True)
    return Pipeline([("prep", prep), ("model", LogisticRegression(C=params.get("C", 1.0)))])


def linear(params: Mapping[str, Any]) -> Pipeline:
    from sklearn.compose import TransformedTargetRegressor

    num, cat = _columns(params)
    return Pipeline(
        [
            ("prep", tabular_preprocessor(num, cat, scale=True)),
            ("model", TransformedTargetRegressor(LinearRegression(), func=np.log, inverse_func=np.exp)),
        ]
    )


CLASSIFIER = ServiceSpec(
    name="synthclf",
    title="Synthetic classifier",
    task="classification",
    data_file="synth.csv",
    target="label",
    fields=FIELDS,
    candidates={"logistic": logistic},
    ignored_columns=("price",),
    threshold_policy=ThresholdPolicy("max_f1"),
)

REGRESSOR = ServiceSpec(
    name="synthreg",
    title="Synthetic regressor",
    task="regression",
    data_file="synth.csv",
    target="price",
    fields=FIELDS,
    candidates={"linear": linear},
    ignored_columns=("label",),
    trusted_types=("sklearn.compose._target.TransformedTargetRegressor", "numpy.log", "numpy.exp"),
)
