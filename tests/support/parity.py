"""Parity of the compiled fast path with the registered scikit-learn pipeline, for any service."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from portfolio.core import registry
from portfolio.core.data import read_raw_csv
from portfolio.core.schema import validate_frame
from portfolio.core.serving.inference import Predictor
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec


def assert_fast_path_parity(spec: ServiceSpec, settings: Settings, data_dir: Path, rows: int = 1000) -> None:
    """On ``rows`` real rows the fast path equals the registered MLflow model's output:
    probabilities within 1e-6 and identical labels at the stored threshold (classifiers), prices
    within $0.01 (regressors)."""
    registry.configure(settings)
    predictor = Predictor(spec, registry.load_champion(spec, settings))
    assert predictor.compiled, predictor.inference
    raw = read_raw_csv(data_dir / spec.data_file)
    sample = raw.sample(min(rows, len(raw)), random_state=0)
    result = validate_frame(sample, spec.fields)
    typed = result.frame[result.valid_mask]
    assert len(typed) >= 0.9 * len(sample)
    # The registered pipeline itself (the pyfunc scores through the fast path: see
    # tests/core/test_mlflow_model.py for the pyfunc against the CLI).
    reference = predictor.model
    fast = predictor.scores_frame(typed)
    # Small requests walk the trees in other tiles (several trees per row instead of many rows
    # per tree, one thread): score the same rows 16 at a time, to the same standard.
    small = np.concatenate([predictor.scores_frame(typed.iloc[i : i + 16]) for i in range(0, len(typed), 16)])
    # A request's rows are walked in numpy (fastpath.trees), more rows by the numba kernel:
    # the same leaves added in the same order, so the same bits.
    single = np.concatenate(
        [predictor.scores_frame(typed.iloc[i : i + 1]) for i in range(min(200, len(typed)))]
    )
    np.testing.assert_array_equal(single, fast[: len(single)])
    X = typed[spec.feature_names]
    if spec.task == "classification":
        expected = reference.predict_proba(X)[:, 1]
        assert predictor.threshold is not None
        for scores in (fast, small):
            np.testing.assert_allclose(scores, expected, atol=1e-6, rtol=0)
            assert np.array_equal(scores >= predictor.threshold, reference.predict(X) == 1)
    else:
        expected = reference.predict(X)
        for scores in (fast, small):
            np.testing.assert_allclose(scores, expected, atol=0.01, rtol=0)
