"""core/data on a synthetic service: reading the raw file, its hash, and the validation policy's
counts (excluded rows are counted by reason, never silently dropped)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from portfolio.core.data import DataUnavailableError, file_md5, load_training_data, raw_path, read_raw_csv
from tests.conftest import make_settings
from tests.support import synthetic


def _dirty(tmp_path: Path) -> Path:
    """200 synthetic rows; rows 3 and 4 fail the schema, rows 5 and 6 have an unusable label."""
    frame = synthetic.make_frame(200, seed=3).astype({"color": object, "label": object})
    frame.loc[3, "x1"] = 99.0  # above max=10
    frame.loc[4, "color"] = "purple"
    frame.loc[5, "label"] = 7  # a classifier's label outside {0, 1}
    frame.loc[6, "label"] = ""  # missing target
    path = tmp_path / "data" / "synth.csv"
    path.parent.mkdir()
    frame.to_csv(path, index=False)
    return path


def test_validation_counts_every_excluded_row_by_reason(tmp_path: Path) -> None:
    path = _dirty(tmp_path)
    settings = make_settings(tmp_path / "state", data_dir=path.parent)
    ds = load_training_data(synthetic.CLASSIFIER, settings)
    assert ds.path == path
    report = ds.report()
    assert report["file"] == "synth.csv" and report["md5"] == file_md5(path)
    assert report["rows_in_file"] == 200 and report["rows_used"] == 196
    assert report["schema"]["invalid_rows"] == 2 and report["target_invalid_rows"] == 2
    reasons = report["schema"]["by_reason"]
    assert reasons == {
        "x1: must be between -10 and 10 (got 99.0)": 1,
        "color: must be one of ['red', 'green', 'blue'] (got 'purple')": 1,
    }
    assert [e["row"] for e in report["schema"]["examples"]] == [3, 4]
    # The kept rows: features only (no target, no ignored column), typed, labels 0/1, re-indexed.
    assert list(ds.X.columns) == list(synthetic.CLASSIFIER.feature_names)
    assert list(ds.X.index) == list(range(196)) and len(ds.y) == 196
    assert set(ds.y.unique()) == {0, 1} and ds.y.dtype.kind == "i"
    assert ds.X["x1"].between(-10, 10).all() and set(ds.X["color"]) == {"red", "green", "blue"}
    assert ds.X["x2"].isna().sum() > 0  # a nullable field's missing values are kept, not dropped


def test_a_regression_target_must_be_a_number(tmp_path: Path) -> None:
    frame = synthetic.make_frame(50).astype({"price": object})
    frame.loc[[0, 1], "price"] = ["n/a", ""]
    frame.loc[2, "label"] = 7  # the classifier's target: ignored by the regressor
    path = tmp_path / "synth.csv"
    frame.to_csv(path, index=False)
    ds = load_training_data(synthetic.REGRESSOR, make_settings(tmp_path / "state"), path)
    assert ds.report()["target_invalid_rows"] == 2 and len(ds.X) == 48
    assert ds.y.dtype.kind == "f"


def test_file_md5_is_the_files_md5_and_changes_with_one_byte(tmp_path: Path) -> None:
    path = synthetic.write_csv(tmp_path / "a.csv", n=50)
    data = path.read_bytes()
    assert file_md5(path) == hashlib.md5(data).hexdigest()
    path.write_bytes(data.replace(b"red", b"reD", 1))
    assert file_md5(path) != hashlib.md5(data).hexdigest()


def test_read_raw_csv_treats_only_empty_cells_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("code,n\nNA,1\n,2\nNULL,\n")
    frame = read_raw_csv(path)
    assert frame["code"].tolist()[0] == "NA" and frame["code"].tolist()[2] == "NULL"
    assert pd.isna(frame.at[1, "code"]) and pd.isna(frame.at[2, "n"])


def test_missing_file_and_missing_target_are_clear_errors(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "state", data_dir=tmp_path)
    with pytest.raises(DataUnavailableError, match=r"raw data file not found: .*synth\.csv.*make data"):
        raw_path(synthetic.CLASSIFIER, settings)
    synthetic.make_frame(20).drop(columns="label").to_csv(tmp_path / "synth.csv", index=False)
    assert raw_path(synthetic.CLASSIFIER, settings) == tmp_path / "synth.csv"
    with pytest.raises(DataUnavailableError, match=r"synth\.csv has no target column 'label'"):
        load_training_data(synthetic.CLASSIFIER, settings)


def test_importing_the_schema_leaves_the_spark_environment_alone() -> None:
    """pandera sets SPARK_LOCAL_IP=127.0.0.1 on import; a cluster driver started later in the same
    process (``portfolio predict --engine spark`` under spark-submit) must not inherit it."""
    import os
    import subprocess
    import sys

    code = "import os, portfolio.core.schema; print(os.environ.get('SPARK_LOCAL_IP'))"
    env = {k: v for k, v in os.environ.items() if k != "SPARK_LOCAL_IP"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "None"
