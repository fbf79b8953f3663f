"""The learning curve on the synthetic services: fixed test rows per repeat, nested training
subsets, threshold-free metrics, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from portfolio.core.data import load_training_data
from portfolio.core.settings import Settings
from portfolio.core.training import evaluation as ev
from portfolio.core.training.learning_curve import _stratified_order, learning_curve
from tests.conftest import make_settings
from tests.support import synthetic


@pytest.fixture
def env(tmp_path: Path) -> tuple[Settings, Path]:
    data = tmp_path / "data"
    data.mkdir()
    synthetic.write_csv(data / "synth.csv", n=800)
    return make_settings(tmp_path / "state", data_dir=data), data / "synth.csv"


def test_full_fraction_is_a_fit_on_every_non_test_row(env: tuple[Settings, Path]) -> None:
    """At fraction 1 the training rows are all the rows but the repeat's test rows, whatever
    their order: the figures equal a plain fit and score on that split, repeat by repeat."""
    settings, _ = env
    spec = synthetic.REGRESSOR
    curve = learning_curve(spec, settings, "linear", {}, [0.3, 1.0], repeats=2, test_fraction=0.2)
    ds = load_training_data(spec, settings)
    assert (curve.rows, curve.test_rows, curve.repeats) == (800, 160, 2)
    assert [p.train_rows for p in curve.points] == [192, 640]
    full = curve.points[1]
    for r in range(2):
        rest, test = train_test_split(np.arange(800), test_size=0.2, random_state=settings.seed + r)
        model = synthetic.linear({}).fit(ds.X.iloc[rest], ds.y.iloc[rest])
        expected = ev.regression_metrics(ds.y.to_numpy()[test], model.predict(ds.X.iloc[test]))
        for m in ("rmse", "r2", "mae"):
            assert full.metrics[m][r] == pytest.approx(expected[m], rel=1e-9)
    # Different repeats score different test rows.
    assert full.metrics["rmse"][0] != full.metrics["rmse"][1]
    # Smaller fits are different fits on the same test rows (a model this simple barely gains).
    assert curve.points[0].metrics["rmse"] != full.metrics["rmse"]
    summary = curve.summary()
    assert summary["points"][1]["mean"]["rmse"] == pytest.approx(np.mean(full.metrics["rmse"]))
    table = curve.to_markdown().splitlines()
    assert len(table) == 4 and table[3].startswith("| 1.000 | 640 |")


def test_classifier_curve_gains_with_rows(env: tuple[Settings, Path]) -> None:
    settings, _ = env
    curve = learning_curve(synthetic.CLASSIFIER, settings, "logistic", {}, [1.0, 0.04], repeats=3)
    assert [p.fraction for p in curve.points] == [0.04, 1.0]  # sorted
    assert curve.metric_names == ("roc_auc", "pr_auc")
    small, full = curve.points
    assert small.train_rows == 29 and full.train_rows == 720
    assert full.mean("roc_auc") > small.mean("roc_auc")
    assert 0.75 < full.mean("roc_auc") < 1.0


def test_stratified_order_keeps_the_class_ratio_in_every_prefix() -> None:
    y = (np.random.default_rng(3).random(1000) < 0.2).astype(int)
    order = _stratified_order(y, seed=5)
    assert sorted(order.tolist()) == list(range(1000))
    share = y.mean()
    prefix_pos = np.cumsum(y[order])
    k = np.arange(1, 1001)
    assert np.all(np.abs(prefix_pos - share * k) <= 1.0 + 1e-9)
    assert not np.array_equal(order, _stratified_order(y, seed=6))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"candidate": "nope"}, "has no candidate 'nope' (one of linear)"),
        ({"fractions": [0.5, 1.5]}, "fractions must be in (0, 1], got [1.5]"),
        ({"fractions": []}, "fractions: give at least one"),
        ({"repeats": 0}, "repeats must be at least 1"),
        ({"test_fraction": 1.0}, "test_fraction must be in (0, 1)"),
    ],
)
def test_bad_arguments_are_named(env: tuple[Settings, Path], kwargs: dict, message: str) -> None:
    settings, _ = env
    args: dict = {"candidate": "linear", "params": {}, "fractions": [1.0]} | kwargs
    with pytest.raises(ValueError) as exc:
        learning_curve(synthetic.REGRESSOR, settings, **args)
    assert message in str(exc.value)
