"""Leak-free resampling: in the core's real cross-validation, the under-sampler inside the telecom
pipeline receives exactly the training fold, never a validation row, and is skipped when scoring."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from imblearn.under_sampling import RandomUnderSampler
from sklearn.model_selection import StratifiedKFold

from portfolio.core.data import load_training_data
from portfolio.core.training.train import cross_validate, split
from portfolio.telecom.spec import SPEC, soft_voting_pipeline
from portfolio.telecom.spec import SPEC as TELECOM
from tests.conftest import make_settings
from tests.support.live import require_data


class RecordingUnderSampler(RandomUnderSampler):
    """A RandomUnderSampler that writes down which rows (by index label) it was given.

    Pipelines clone their steps, so the log is a class attribute shared by the clones."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def fit_resample(self, X: Any, y: Any, **params: Any) -> Any:
        Xr, yr = super().fit_resample(X, y, **params)
        RecordingUnderSampler.calls.append(
            {"received": set(X.index), "kept": len(Xr), "kept_positive": int(np.sum(yr))}
        )
        return Xr, yr


def test_resampler_only_ever_sees_training_folds(tmp_path: Path) -> None:
    require_data(TELECOM)
    settings = make_settings(tmp_path / "state", cv_folds=5)
    ds = load_training_data(SPEC, settings)
    X_train, _, y_train, _ = split(SPEC, ds, settings)
    assert not X_train.index.equals(pd.RangeIndex(len(X_train)))  # labels identify the real rows

    small = {"xgb_n_estimators": 30, "rf_n_estimators": 30, "n_jobs": 1}
    spec = replace(
        SPEC,
        candidates={
            "recorded": lambda p: soft_voting_pipeline(p, sampler=RecordingUnderSampler(random_state=0))
        },
    )
    RecordingUnderSampler.calls.clear()
    result = cross_validate(spec, "recorded", small, X_train, y_train, settings)

    # One fit per fold and no call while scoring the validation folds.
    calls = RecordingUnderSampler.calls
    assert len(calls) == settings.cv_folds
    folds = StratifiedKFold(settings.cv_folds, shuffle=True, random_state=settings.seed)
    all_rows = set(X_train.index)
    for call, (tr, va) in zip(calls, folds.split(X_train, y_train), strict=True):
        validation = set(X_train.index[va])
        assert call["received"].isdisjoint(validation)
        assert call["received"] == set(X_train.index[tr])
        assert call["received"] | validation == all_rows
        # It really resampled: balanced classes, fewer rows than the fold.
        assert call["kept"] == 2 * call["kept_positive"] < len(tr)
    # Every row was scored out-of-fold, by models whose resampler never saw it.
    assert np.all((result.oof > 0) & (result.oof < 1))
    assert result.primary > 0.8
