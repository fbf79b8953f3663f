"""The compiled inference path: exact parity with scikit-learn, and an honest fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from portfolio.bankchurn.spec import SPEC as BANKCHURN
from portfolio.core.fastpath import NotCompilable, compile_column_transformer, compile_pipeline, to_columns
from portfolio.core.features import tabular_preprocessor
from portfolio.core.inference import Predictor
from portfolio.core.registry import LoadedModel
from portfolio.core.schema import validate_frame
from portfolio.core.settings import Settings
from tests.core import synthetic
from tests.core.parity import assert_fast_path_parity


def _typed(n: int, seed: int) -> pd.DataFrame:
    frame = synthetic.make_frame(n, seed)
    return validate_frame(frame, synthetic.FIELDS).frame


@pytest.mark.parametrize("scale", [False, True])
def test_column_transformer_matches_scikit_learn(scale: bool) -> None:
    train = _typed(300, 1)
    ct = tabular_preprocessor(["x1", "x2", "noise"], ["color"], scale=scale).fit(train)
    test = _typed(50, 2)
    test.loc[0, "color"] = "violet"  # unseen category → all zeros, like handle_unknown="ignore"
    test.loc[1, "color"] = None  # missing category → imputed constant
    fast = compile_column_transformer(ct)(
        to_columns(test.to_dict("records"), synthetic.FIELDS)  # type: ignore[arg-type]
    )
    np.testing.assert_allclose(fast, ct.transform(test), atol=1e-12)


def test_pipeline_probability_matches_scikit_learn() -> None:
    train = _typed(400, 3)
    y = synthetic.make_frame(400, 3)["label"]
    pipe = synthetic.logistic({}).fit(train, y)
    test = _typed(100, 4)
    fast = compile_pipeline(pipe, "classification")(to_columns(test.to_dict("records"), synthetic.FIELDS))  # type: ignore[arg-type]
    np.testing.assert_allclose(fast, pipe.predict_proba(test)[:, 1], atol=1e-12)


class Opaque(TransformerMixin, BaseEstimator):
    """A feature step without a columnar twin: the compiler must refuse it."""

    def fit(self, X: pd.DataFrame, y: object = None) -> Opaque:
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return X


def test_unknown_step_falls_back_to_the_pipeline_and_says_why() -> None:
    train = _typed(300, 5)
    y = synthetic.make_frame(300, 5)["label"]
    pipe = Pipeline(
        [
            ("opaque", Opaque()),
            ("prep", tabular_preprocessor(["x1"], ["color"])),
            ("model", LogisticRegression()),
        ]
    ).fit(train, y)
    with pytest.raises(NotCompilable, match="Opaque"):
        compile_pipeline(pipe, "classification")
    from sklearn.model_selection import FixedThresholdClassifier

    wrapped = FixedThresholdClassifier(pipe, threshold=0.5).fit(train, y)
    predictor = Predictor(synthetic.CLASSIFIER, LoadedModel("synthclf", "1", wrapped, "x", None))
    assert not predictor.compiled and "Opaque" in predictor.inference
    out = predictor.predict_records([{"x1": 0.1, "x2": 1, "color": "red", "noise": 0.0}])
    assert 0 <= out[0]["probability"] <= 1


def test_bankchurn_fast_path_equals_the_registered_mlflow_model(bank_state: Settings, data_dir: Path) -> None:
    assert_fast_path_parity(BANKCHURN, bank_state, data_dir)
