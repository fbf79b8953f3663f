"""Repeated cross-validation on the synthetic services: the training loop's folds and scores,
the decision rule chosen on the other folds only, one figure per repeat and fold, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import KFold, StratifiedKFold

from portfolio.core.data import load_training_data
from portfolio.core.settings import Settings
from portfolio.core.training import evaluation as ev
from portfolio.core.training.cv import CV_METRICS, fold_metrics, repeated_cv, to_markdown
from portfolio.core.training.train import cross_validate
from tests.conftest import make_settings
from tests.support import synthetic


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    data = tmp_path / "data"
    data.mkdir()
    synthetic.write_csv(data / "synth.csv", n=600)
    return make_settings(tmp_path / "state", data_dir=data, cv_folds=4)


def test_classifier_figures_are_the_training_loops_folds_with_the_threshold_from_other_folds(
    settings: Settings,
) -> None:
    spec = synthetic.CLASSIFIER
    est = repeated_cv(spec, settings, "logistic", {}, repeats=2, folds=3)
    assert (est.rows, est.repeats, est.folds) == (600, 2, 3)
    assert tuple(est.metrics) == CV_METRICS["classification"]
    assert all(len(v) == 6 for v in est.metrics.values())
    ds = load_training_data(spec, settings)
    y = ds.y.to_numpy()
    for r in range(2):
        # The same folds and out-of-fold scores as training's cross_validate with seed + r.
        run = settings.model_copy(update={"seed": settings.seed + r, "cv_folds": 3})
        res = cross_validate(spec, "logistic", {}, ds.X, ds.y, run)
        assert est.metrics["roc_auc"][3 * r : 3 * r + 3] == pytest.approx(res.fold_scores, rel=1e-12)
        folds = StratifiedKFold(3, shuffle=True, random_state=settings.seed + r).split(ds.X, y)
        for i, (fit_rows, test_rows) in enumerate(folds):
            t = ev.choose_threshold(y[fit_rows], res.oof[fit_rows], spec.threshold_policy)
            expected = ev.classification_metrics(y[test_rows], res.oof[test_rows], t)
            assert est.metrics["threshold"][3 * r + i] == t
            assert est.metrics["f1"][3 * r + i] == pytest.approx(expected["f1"], rel=1e-12)
    # Repeats re-shuffle the folds.
    assert est.repeat_means("roc_auc")[0] != est.repeat_means("roc_auc")[1]
    assert 0.7 < est.mean("roc_auc") < 1.0 and 0 < est.std("roc_auc") < 0.1
    assert est.summary()["mean"]["f1"] == pytest.approx(np.mean(est.metrics["f1"]))


def test_threshold_never_sees_the_labels_it_is_measured_on() -> None:
    """Flipping the test rows' labels changes the measured figures, never the threshold."""
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(int)
    scores = np.clip(0.3 * y + rng.random(400) * 0.7, 0, 1)
    fit_rows, test_rows = np.arange(300), np.arange(300, 400)
    a = fold_metrics(synthetic.CLASSIFIER, y, scores, fit_rows, test_rows)
    flipped = y.copy()
    flipped[test_rows] = 1 - flipped[test_rows]
    b = fold_metrics(synthetic.CLASSIFIER, flipped, scores, fit_rows, test_rows)
    assert a["threshold"] == b["threshold"]
    assert a["recall"] != b["recall"]
    # ...while the fit rows' labels do move it.
    moved = y.copy()
    moved[fit_rows] = 1 - moved[fit_rows]
    moved_threshold = fold_metrics(synthetic.CLASSIFIER, moved, scores, fit_rows, test_rows)["threshold"]
    assert moved_threshold != a["threshold"]


def test_regressor_interval_is_calibrated_on_the_other_folds(settings: Settings) -> None:
    spec = synthetic.REGRESSOR
    est = repeated_cv(spec, settings, "linear", {}, repeats=2)  # folds from settings: 4
    assert (est.repeats, est.folds) == (2, 4)
    assert tuple(est.metrics) == CV_METRICS["regression"]
    # An 80% interval calibrated out of fold covers about 80% of unseen rows.
    assert 0.74 < est.mean("coverage") < 0.86
    ds = load_training_data(spec, settings)
    y = ds.y.to_numpy()
    res = cross_validate(spec, "linear", {}, ds.X, ds.y, settings)
    fit_rows, test_rows = next(KFold(4, shuffle=True, random_state=settings.seed).split(ds.X))
    expected = fold_metrics(spec, y, res.oof, fit_rows, test_rows)
    assert est.metrics["coverage"][0] == expected["coverage"]
    assert est.metrics["rmse"][0] == pytest.approx(res.fold_scores[0], rel=1e-12)
    table = to_markdown([est]).splitlines()
    assert table[0].startswith("| candidate | repeats x folds | rmse mean ± sd (min-max)")
    assert table[2].startswith("| linear | 2 x 4 | ")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"candidate": "nope"}, "has no candidate 'nope' (one of linear)"),
        ({"repeats": 0}, "repeats must be at least 1, got 0"),
        ({"folds": 1}, "folds must be at least 2, got 1"),
    ],
)
def test_bad_arguments_are_named(settings: Settings, kwargs: dict, message: str) -> None:
    args: dict = {"candidate": "linear", "params": {}} | kwargs
    with pytest.raises(ValueError) as exc:
        repeated_cv(synthetic.REGRESSOR, settings, **args)
    assert message in str(exc.value)


def test_a_selection_metric_outside_the_task_figures_leads_them_and_picks_the_best(
    settings: Settings,
) -> None:
    import dataclasses

    from portfolio.core.training.cv import best_estimate

    spec = dataclasses.replace(synthetic.CLASSIFIER, selection_metric="accuracy")
    est = repeated_cv(spec, settings, "logistic", {}, repeats=1, folds=3)
    assert tuple(est.metrics) == ("accuracy", *CV_METRICS["classification"])
    assert all(0.5 < v <= 1 for v in est.metrics["accuracy"])
    assert best_estimate(spec, [est]) is est
