"""Parity of the compiled fast path with the registered scikit-learn pipeline, for any service."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from portfolio.core import registry
from portfolio.core.data import read_raw_csv
from portfolio.core.schema import validate_frame
from portfolio.core.serving.api import create_app
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
    # The API's /predict: one record's JSON values (fastpath.columns.OneRecord where it applies).
    score_column = spec.strategy.score_column(spec)
    api = [
        predictor.predict_columns(None, True, {f.name: (r.get(f.name),) for f in spec.fields})[score_column]
        for r in json_records(spec, sample.loc[typed.index[: len(single)]])
    ]
    np.testing.assert_array_equal(np.concatenate(api), single)
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


def json_records(spec: ServiceSpec, raw: pd.DataFrame) -> list[dict[str, Any]]:
    """Raw rows (as read from the CSV) as JSON request records: numbers as numbers, missing values
    as null, text (dates too) as it is in the file."""
    records = []
    for row in raw[spec.feature_names].to_dict(orient="records"):
        record: dict[str, Any] = {}
        for f in spec.fields:
            v = row[f.name]
            if v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip()):
                record[f.name] = None
            elif f.kind == "int":
                record[f.name] = int(float(v))
            elif f.kind == "float":
                record[f.name] = float(v)
            else:
                record[f.name] = v.item() if isinstance(v, np.generic) else v
        records.append(record)
    return records


def assert_served_as_in_process(
    url: str, spec: ServiceSpec, settings: Settings, data_dir: Path, rows: int = 300
) -> None:
    """A served API (`portfolio serve`: its worker runs without pyarrow, core/processes.py
    ``keep_pyarrow_out``) answers ``rows`` real records, with their explanations, exactly as the
    same app in this process, where pandas has pyarrow: every field of every answer equal."""
    raw = read_raw_csv(data_dir / spec.data_file)
    sample = raw.sample(min(rows, len(raw)), random_state=3)
    records = json_records(spec, sample[validate_frame(sample, spec.fields).valid_mask])
    assert len(records) >= 0.9 * min(rows, len(raw))
    body = {"records": records}
    served = httpx.post(f"{url}/predict/batch", json=body, timeout=120)
    assert served.status_code == 200, served.text[:2000]
    with TestClient(create_app(spec, settings)) as client:
        deadline = time.monotonic() + 120
        while (ready := client.get("/ready")).status_code != 200:  # the model loads in the background
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        here = client.post("/predict/batch", json=body)
    assert here.status_code == 200, here.text[:2000]
    theirs, ours = served.json(), here.json()
    assert theirs["count"] == ours["count"] == len(records)
    assert theirs["predictions"] == ours["predictions"]
    one = httpx.post(f"{url}/predict", json=records[0], timeout=30).json()
    assert {k: v for k, v in one.items() if k != "request_id"} == {
        k: v for k, v in ours["predictions"][0].items() if k != "request_id"
    }
