"""training/model_card: the card written from a TrainOutcome states the run's figures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from portfolio.core.training.model_card import write_model_card
from portfolio.core.training.outcome import TrainOutcome
from tests.conftest import make_settings
from tests.support import synthetic

CLF, REG = synthetic.CLASSIFIER, synthetic.REGRESSOR


def _ci(value: float) -> dict[str, float]:
    return {"value": value, "ci_low": value - 0.02, "ci_high": value + 0.01}


GATE = {
    "reason": "beats champion v2", "champion_version": "2", "new_version": "3", "metric": "roc_auc",
    "new": 0.7988, "champion": 0.7901,
}  # fmt: skip
DATA_REPORT = {
    "file": "synth.csv", "md5": "0123abcd", "rows_in_file": 600, "rows_used": 590,
    "schema": {"invalid_rows": 7, "by_reason": {"x1: out of range": 7}}, "target_invalid_rows": 3,
    "cleaning": None,
}  # fmt: skip
OUTCOME = TrainOutcome(
    service="synthclf",
    run_id="r1",
    version="3",
    alias="champion",
    best="logistic",
    threshold=0.41237,
    cv={"roc_auc": _ci(0.81234), "f1": _ci(0.65)},
    test={"roc_auc": _ci(0.79876)},
    candidates={"logistic": {"roc_auc": 0.81234, "f1": 0.65}, "other": {"roc_auc": 0.7}},
    gate=GATE,
    data_report=DATA_REPORT,
    params={"C": 0.5},
    importance={"noise": 0.0012, "x1": 0.2345},
    train_rows=472,
)


def test_the_card_states_the_runs_figures(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, test_size=0.2, seed=11, cv_folds=4)
    path = write_model_card(CLF, settings, OUTCOME)
    assert path == settings.resolved_models_dir / "synthclf" / "model_card.md"
    card = path.read_text()
    assert card.startswith("# Model card: Synthetic classifier (`synthclf` v3)\n")
    assert "Registry alias after the gate: **champion** (beats champion v2)." in card
    assert "chosen candidate: `logistic` (best mean cross-validated roc_auc of 2 candidates)" in card
    assert "- Hyper-parameters: `{'C': 0.5}`" in card
    assert "Fitted on the training split (472 rows); this is the registered artifact." in card
    assert "Decision threshold: **0.4124**, chosen on out-of-fold predictions (max_f1)" in card
    assert "- File `synth.csv` (md5 `0123abcd`), 600 rows; 590 used." in card
    assert "Rows failing the schema: 7 {'x1: out of range': 7}; unusable target: 3." in card
    assert "stratified hold-out 20% (seed 11); 4-fold CV on the rest." in card
    assert "| roc_auc | 0.8123 [0.7923, 0.8223] | 0.7988 [0.7788, 0.8088] |" in card
    assert "| f1 | 0.6500 [0.6300, 0.6600] |  |" in card
    assert "| candidate | f1 | roc_auc |" in card and "| other | nan | 0.7000 |" in card
    assert "New v3: roc_auc 0.7988 (hold-out of the training-split fit) vs champion v2: 0.7901" in card
    assert card.index("- x1: 0.2345") < card.index("- noise: 0.0012")  # most important first
    assert "Refit on all rows" not in card and "Prediction interval" not in card


def test_a_refit_run_says_the_figures_are_from_the_split_fit(tmp_path: Path) -> None:
    outcome = dataclasses.replace(OUTCOME, refit_full=True, final_fit_rows=590)
    card = write_model_card(CLF, make_settings(tmp_path), outcome).read_text()
    assert "**Refit on all rows**: the registered artifact was refit on all 590 rows" in card
    assert "with the same candidate, hyper-parameters and threshold" in card
    assert "fitted on the training split only (472 rows)" in card
    assert "this is the registered artifact" not in card


def test_a_regressor_card_describes_its_interval_and_has_no_threshold(tmp_path: Path) -> None:
    outcome = dataclasses.replace(
        OUTCOME, service="synthreg", threshold=None, refit_full=True, final_fit_rows=590,
        refit_interval=(0.85, -0.2, 0.3), gate={"reason": "first version"},
    )  # fmt: skip
    card = write_model_card(REG, make_settings(tmp_path), outcome).read_text()
    assert card.startswith("# Model card: Synthetic regressor (`synthreg` v3)")
    assert "Decision threshold" not in card and "## Champion gate\n`{'reason': 'first version'}`" in card
    assert f"split-conformal {REG.interval_coverage:.0%} interval" in card
    assert "calibrated on the split model's hold-out log-ratio residuals at 85% (the price times " in card
    assert "[0.819, 1.350]" in card  # exp(-0.2), exp(0.3)
