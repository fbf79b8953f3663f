"""CSV batch prediction: one output row per input row, in order, errors per row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from portfolio.core import registry
from portfolio.core.serving.batch import InputFileError, predict_csv
from portfolio.core.serving.inference import Predictor
from portfolio.core.settings import Settings
from portfolio.core.training.train import train_service
from tests.conftest import make_settings
from tests.support import synthetic


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    root = tmp_path_factory.mktemp("batch")
    (root / "data").mkdir()
    synthetic.write_csv(root / "data" / "synth.csv", n=500)
    settings: Settings = make_settings(root / "state", data_dir=root / "data", cv_folds=2)
    train_service(synthetic.CLASSIFIER, settings)
    return Predictor(synthetic.CLASSIFIER, registry.load_champion(synthetic.CLASSIFIER, settings))


def test_every_input_row_gets_one_output_row_in_order(predictor: Predictor, tmp_path: Path) -> None:
    frame = synthetic.make_frame(250, seed=5).astype({"x1": object})
    frame.loc[3, "x1"] = "oops"
    frame.loc[7, "color"] = "purple"
    frame.loc[100, "x1"] = 1e6
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    out_path = tmp_path / "out.csv"
    report = predict_csv(predictor, src, out_path, chunk_rows=64)  # several chunks on purpose
    out = pd.read_csv(out_path, keep_default_na=False)
    assert len(out) == 250 and report.rows == 250 and report.failed == 3
    assert list(out.columns) == ["probability", "prediction", "error"]
    bad = {3: "x1: not a number", 7: "color", 100: "x1"}
    for i, text in bad.items():
        assert text in out.loc[i, "error"] and out.loc[i, "probability"] == ""
    good = out.drop(index=list(bad))
    assert (good["error"] == "").all()
    # Same numbers as scoring the valid rows directly, in the same order.
    valid = frame.drop(index=list(bad)).reset_index(drop=True)
    features = valid[predictor.spec.feature_names].astype({"x1": float, "x2": float, "noise": float})
    expected = predictor.model.predict_proba(features)[:, 1]
    assert good["probability"].astype(float).round(6).tolist() == pd.Series(expected).round(6).tolist()
    assert (good["prediction"].astype(int) == (expected >= predictor.threshold)).all()


def test_extra_columns_are_ignored(predictor: Predictor, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    synthetic.make_frame(5).assign(customer_id=range(5)).to_csv(src, index=False)
    report = predict_csv(predictor, src, tmp_path / "out.csv")
    assert report.failed == 0 and report.rows == 5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"x1,color\n1,red\n", "missing required columns: x2, noise"),
        (b"x1,x2,color,noise\n\xff\xfe,1,red,0\n", "not UTF-8"),
    ],
)
def test_whole_file_problems_are_clear_errors(
    predictor: Predictor, tmp_path: Path, content: bytes, message: str
) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(content)
    with pytest.raises(InputFileError, match=message):
        predict_csv(predictor, src, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_header_only_file_gives_header_only_output(predictor: Predictor, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("x1,x2,color,noise\n")
    report = predict_csv(predictor, src, tmp_path / "out.csv")
    assert report.rows == 0
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["probability", "prediction", "error"] and len(out) == 0
