"""The per-group fairness report: its arithmetic, and its place in training (MLflow + model card)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from portfolio.bankchurn.spec import SPEC as BANK
from portfolio.core import registry
from portfolio.core.data import load_training_data
from portfolio.core.settings import Settings
from portfolio.core.training.fairness import fairness_markdown, fairness_metrics, fairness_report
from portfolio.core.training.train import HOLDOUT_PREDICTIONS_ARTIFACT, split


def test_rates_and_ratios_by_hand() -> None:
    X = pd.DataFrame({"g": ["a"] * 4 + ["b"] * 4 + ["c"]})
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0, 1])
    proba = np.array([0.9, 0.2, 0.8, 0.1, 0.9, 0.9, 0.1, 0.1, 0.9])
    r = fairness_report(X, y, proba, 0.5, ["g"], min_group_rows=2)
    a, b = r["groups"]["g"]["by_group"]["a"], r["groups"]["g"]["by_group"]["b"]
    assert a == {"rows": 4, "base_rate": 0.5, "positive_rate": 0.5, "recall": 0.5, "precision": 0.5}
    assert b == {"rows": 4, "base_rate": 0.5, "positive_rate": 0.5, "recall": 1.0, "precision": 1.0}
    g = r["groups"]["g"]
    assert g["compared_groups"] == ["a", "b"]  # c has one row: listed, not compared
    assert g["ratio_min_max"] == {"positive_rate": 1.0, "recall": 0.5, "precision": 0.5}
    assert g["below_four_fifths"] == ["recall", "precision"]
    metrics = fairness_metrics(r)
    assert metrics["fairness_g_recall_ratio"] == 0.5 and metrics["fairness_g_b_precision"] == 1.0


def test_undefined_metrics_are_null_and_numeric_groups_are_binned() -> None:
    X = pd.DataFrame({"age": np.arange(100, dtype=float), "senior": [0.0, 1.0] * 50})
    y = np.zeros(100, dtype=int)  # no positives at all: recall undefined everywhere
    proba = np.linspace(0, 1, 100)
    r = fairness_report(X, y, proba, 0.5, ["age", "senior"], min_group_rows=10)
    assert len(r["groups"]["age"]["by_group"]) == 4  # quartiles
    assert set(r["groups"]["senior"]["by_group"]) == {"0", "1"}
    assert all(v["recall"] is None for v in r["groups"]["age"]["by_group"].values())
    assert r["groups"]["age"]["ratio_min_max"]["recall"] is None
    text = "\n".join(fairness_markdown(r))
    assert "### senior" in text and "n/a" in text
    with pytest.raises(KeyError, match="not a feature"):
        fairness_report(X, y, proba, 0.5, ["nope"])


def test_training_logs_the_report_and_the_model_card_shows_it(bank_state: Settings, tmp_path: Path) -> None:
    loaded = registry.load_champion(BANK, bank_state)
    client = MlflowClient()
    report = json.loads(
        Path(client.download_artifacts(loaded.run_id, "fairness.json", str(tmp_path))).read_text()
    )
    assert set(report["groups"]) == {"Gender", "Geography"}
    assert set(report["groups"]["Geography"]["by_group"]) == {"France", "Germany", "Spain"}

    # Recompute on the same hold-out rows with the model the report describes: the numbers must
    # match. BankChurn's registered model is refit on all rows (refit_full), so that is the
    # training-split model, whose hold-out scores the run logged.
    ds = load_training_data(BANK, bank_state)
    _, X_test, _, y_test = split(BANK, ds, bank_state)
    assert registry.is_refit(registry.version_tags("bankchurn", loaded.version))
    logged = client.download_artifacts(loaded.run_id, HOLDOUT_PREDICTIONS_ARTIFACT, str(tmp_path))
    holdout = json.loads(Path(logged).read_text())
    assert holdout["actual"] == y_test.tolist()
    proba = np.asarray(holdout["proba"])
    expected = fairness_report(
        X_test, y_test.to_numpy(), proba, loaded.threshold or 0.5, BANK.fairness_groups
    )
    assert report["rows"] == len(X_test) == 1700
    for col in ("Gender", "Geography"):
        for group, vals in expected["groups"][col]["by_group"].items():
            for k, v in vals.items():
                assert report["groups"][col]["by_group"][group][k] == pytest.approx(v)
        ratio = report["groups"][col]["ratio_min_max"]["positive_rate"]
        rates = [v["positive_rate"] for v in report["groups"][col]["by_group"].values()]
        assert ratio == pytest.approx(min(rates) / max(rates))

    metrics = client.get_run(loaded.run_id).data.metrics
    for key in (
        "fairness_Gender_positive_rate_ratio",
        "fairness_Geography_recall_ratio",
        "fairness_Gender_Male_recall",
    ):
        assert key in metrics
    card_path = client.download_artifacts(loaded.run_id, "model_card.md", str(tmp_path))
    card = Path(card_path).read_text()
    assert "## Fairness (hold-out, per group)" in card
    assert "### Gender" in card and "### Geography" in card and "ratio min/max" in card
