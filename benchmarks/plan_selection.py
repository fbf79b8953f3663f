"""Plan Recommendation: the candidate models compared by repeated stratified cross-validation on
the training split only, never the hold-out (accuracy at the 0.5 threshold, mean ± sd over every
fold of every repeat). `python benchmarks/plan_selection.py [--repeats 5]`; the figures are quoted
in params.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBClassifier

DATA = Path(__file__).resolve().parents[1] / "data" / "raw" / "users_behavior.csv"


def main() -> None:
    """Print each candidate's repeated-CV accuracy."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    df = pd.read_csv(DATA)
    X, y = df.drop(columns="is_ultra"), df["is_ultra"]
    # The core's split (PORTFOLIO_TEST_SIZE 0.2, seed 42, stratified): its hold-out stays unseen.
    X, _, y, _ = train_test_split(X, y, test_size=0.2, random_state=42, stratify=y)
    cv = RepeatedStratifiedKFold(n_splits=5, n_repeats=args.repeats, random_state=42)
    candidates = {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "random_forest_300_leaf3": RandomForestClassifier(300, min_samples_leaf=3, random_state=42, n_jobs=1),
        "random_forest_300_depth8": RandomForestClassifier(300, max_depth=8, random_state=42, n_jobs=1),
        "hist_gbm": HistGradientBoostingClassifier(
            max_depth=3, learning_rate=0.05, max_iter=200, random_state=42
        ),
        "xgboost_d3": XGBClassifier(
            n_estimators=300, learning_rate=0.03, max_depth=3, subsample=0.8, n_jobs=1
        ),
        "xgboost_d4_mcw5": XGBClassifier(
            n_estimators=400,
            learning_rate=0.02,
            max_depth=4,
            min_child_weight=5,
            subsample=0.8,
            colsample_bytree=0.8,
            n_jobs=1,
        ),
    }
    for name, est in candidates.items():
        scores = cross_val_score(est, X, y, cv=cv, scoring="accuracy", n_jobs=1)
        print(
            f"{name:28s} accuracy {np.mean(scores):.4f} ± {np.std(scores):.4f} ({len(scores)} folds)",
            flush=True,
        )


if __name__ == "__main__":
    main()
