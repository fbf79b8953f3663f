"""The core training loop, registry gate and safe loading, on synthetic services."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from portfolio.core import registry
from portfolio.core.data import load_training_data
from portfolio.core.settings import Settings
from portfolio.core.training.train import train_service
from tests.conftest import make_settings
from tests.support import synthetic


@pytest.fixture
def env(tmp_path: Path) -> tuple[Settings, Path]:
    data = tmp_path / "data"
    data.mkdir()
    synthetic.write_csv(data / "synth.csv", n=800)
    return make_settings(tmp_path / "state", data_dir=data, cv_folds=3), data / "synth.csv"


def test_classifier_is_trained_logged_registered_and_champion(env: tuple[Settings, Path]) -> None:
    settings, _ = env
    out = train_service(synthetic.CLASSIFIER, settings)
    assert out.version == "1" and out.alias == "champion"
    assert out.cv["roc_auc"]["value"] > 0.75
    assert out.cv["roc_auc"]["ci_low"] < out.cv["roc_auc"]["value"] < out.cv["roc_auc"]["ci_high"]
    loaded = registry.load_champion(synthetic.CLASSIFIER, settings)
    # The threshold chosen on out-of-fold data travels inside the one artifact.
    assert loaded.threshold == pytest.approx(out.threshold)
    assert loaded.sha256 == MlflowClient().get_model_version("synthclf", "1").tags["sha256"]
    run = MlflowClient().get_run(out.run_id)
    for key in ("test_roc_auc", "test_roc_auc_ci_low", "cv_f1", "test_brier"):
        assert key in run.data.metrics
    assert run.data.tags["data_md5"] and run.data.tags["git_commit"]
    card = settings.resolved_models_dir / "synthclf" / "model_card.md"
    assert "Decision threshold" in card.read_text()


def test_gate_keeps_a_better_champion_and_marks_challenger(env: tuple[Settings, Path]) -> None:
    settings, _ = env
    spec = synthetic.CLASSIFIER
    good = train_service(spec, settings)
    worse = train_service(spec, settings, params={"candidates": {"logistic": {"features": ["noise"]}}})
    assert worse.alias == "challenger"
    assert worse.gate["champion"] > worse.gate["new"]
    assert str(registry.champion_version(spec.name).version) == good.version  # type: ignore[union-attr]
    # An equally good model replaces the champion ("not worse" wins).
    same = train_service(spec, settings)
    assert same.alias == "champion"
    # Promotion by hand moves the alias.
    registry.promote(spec.name, worse.version)
    assert registry.load_champion(spec, settings).version == worse.version


def test_interrupted_training_registers_nothing(env: tuple[Settings, Path], monkeypatch: Any) -> None:
    settings, _ = env
    spec = synthetic.CLASSIFIER
    first = train_service(spec, settings)

    def boom(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("interrupted half-way")

    monkeypatch.setattr("portfolio.core.training.train.permutation_importance", boom)
    with pytest.raises(KeyboardInterrupt):
        train_service(spec, settings)
    versions = MlflowClient().search_model_versions("name='synthclf'")
    assert [str(v.version) for v in versions] == [first.version]
    assert str(registry.champion_version(spec.name).version) == first.version  # type: ignore[union-attr]


def test_tampered_artifact_is_refused(env: tuple[Settings, Path]) -> None:
    settings, _ = env
    spec = synthetic.CLASSIFIER
    train_service(spec, settings)
    loaded = registry.load_champion(spec, settings)
    cached = settings.model_cache_dir / spec.name / f"v{loaded.version}" / registry.MODEL_FILE
    # Tamper with the stored artifact itself, and with the local cache copy.
    stored = next(settings.artifact_root.rglob(registry.MODEL_FILE))
    stored.write_bytes(stored.read_bytes() + b"tampered")
    cached.write_bytes(cached.read_bytes() + b"tampered")
    with pytest.raises(registry.ModelIntegrityError, match="checksum mismatch"):
        registry.load_version(spec, settings, loaded.version)


def test_regressor_gets_a_calibrated_interval(env: tuple[Settings, Path]) -> None:
    settings, _ = env
    out = train_service(synthetic.REGRESSOR, settings)
    assert out.alias == "champion"
    assert 0.7 <= out.test["coverage"]["value"] <= 0.9
    assert out.test["r2"]["value"] > 0.5
    loaded = registry.load_champion(synthetic.REGRESSOR, settings)
    X = load_training_data(synthetic.REGRESSOR, settings).X.head(20)
    point, low, high = loaded.model.predict_interval(X)
    assert np.all(low < point) and np.all(point < high)


def test_rows_failing_the_schema_are_excluded_and_reported(env: tuple[Settings, Path]) -> None:
    settings, path = env
    text = path.read_text().splitlines()
    header = text[0].split(",")
    bad = dict(zip(header, text[1].split(","), strict=True)) | {"x1": "999", "color": "purple"}
    path.write_text("\n".join([*text, ",".join(bad[h] for h in header)]) + "\n")
    ds = load_training_data(replace(synthetic.CLASSIFIER), settings)
    report = ds.report()
    assert report["rows_in_file"] == 801 and report["rows_used"] == 800
    assert report["schema"]["invalid_rows"] == 1
    assert any("x1" in r for r in report["schema"]["by_reason"])


def _fitted_rows(model: Any) -> int:
    """Rows the synthetic pipeline inside a wrapped model was fitted on (StandardScaler's count)."""
    pipe = model.estimator_
    return int(pipe.named_steps["prep"].named_transformers_["num"].named_steps["scale"].n_samples_seen_)


def test_refit_full_registers_a_model_fitted_on_all_rows(tmp_path: Path) -> None:
    spec = synthetic.REGRESSOR
    data = tmp_path / "data"
    data.mkdir()
    synthetic.write_csv(data / "synth.csv", n=800)
    split_only = make_settings(tmp_path / "split", data_dir=data, cv_folds=3)
    refit = make_settings(tmp_path / "refit", data_dir=data, cv_folds=3)
    twin = train_service(spec, split_only)
    out = train_service(spec, refit, params={"refit_full": True})
    assert not twin.refit_full and out.refit_full and out.final_fit_rows == 800

    run = MlflowClient().get_run(out.run_id)
    assert run.data.params["refit_full"] == "True" and run.data.params["final_fit_rows"] == "800"
    assert run.data.params["train_rows"] == "640"
    loaded = registry.load_champion(spec, refit)
    assert _fitted_rows(loaded.model) == 800
    tags = MlflowClient().get_model_version(spec.name, out.version).tags
    assert tags["refit_full"] == "true" and float(tags["holdout_rmse"]) == out.test["rmse"]["value"]
    # Same candidate and interval, but fitted on more rows: other predictions.
    X = load_training_data(spec, refit).X.head(50)
    refit_point = loaded.model.predict(X)
    registry.configure(split_only)
    split_model = registry.load_champion(spec, split_only).model
    assert _fitted_rows(split_model) == 640
    assert (loaded.model.q_low, loaded.model.q_high) == (split_model.q_low, split_model.q_high)
    assert not np.allclose(refit_point, split_model.predict(X))
    # Every reported figure is the split-fitted model's: identical to the run without refit.
    assert out.test == twin.test and out.cv == twin.cv
    card = (refit.resolved_models_dir / spec.name / "model_card.md").read_text()
    assert "refit on all 800 rows" in card and "training split only (640 rows)" in card
    # The drift reference profiles the rows the served model was fitted on, with its scores.
    registry.configure(refit)
    import mlflow

    ref = mlflow.artifacts.load_dict(f"runs:/{out.run_id}/drift_reference.json")
    assert ref["rows"] == 800 and ref["source"].startswith("all rows")


def test_a_refit_regressor_can_calibrate_its_interval_on_the_holdout(tmp_path: Path) -> None:
    """``refit_interval_coverage``: the refit model's interval comes from the split model's
    hold-out residuals at that level; the split model's own figures are unchanged; misuse is a
    clear error naming the parameter."""
    import mlflow

    from portfolio.core.estimators import conformal_log_quantiles
    from portfolio.core.training.train import HOLDOUT_PREDICTIONS_ARTIFACT

    spec = synthetic.REGRESSOR
    data = tmp_path / "data"
    data.mkdir()
    synthetic.write_csv(data / "synth.csv", n=800)
    settings = make_settings(tmp_path / "s", data_dir=data, cv_folds=3)
    plain = train_service(spec, settings, params={"refit_full": True})
    out = train_service(spec, settings, params={"refit_full": True, "refit_interval_coverage": 0.6})
    assert out.test == plain.test and out.cv == plain.cv
    holdout = mlflow.artifacts.load_dict(f"runs:/{out.run_id}/{HOLDOUT_PREDICTIONS_ARTIFACT}")
    expected = conformal_log_quantiles(np.asarray(holdout["actual"]), np.asarray(holdout["pred"]), 0.6)
    served = registry.load_version(spec, settings, out.version).model
    assert (served.q_low, served.q_high) == pytest.approx(expected, abs=1e-12)
    before = registry.load_version(spec, settings, plain.version).model
    assert served.q_high - served.q_low < before.q_high - before.q_low  # a 60% interval is narrower
    params = MlflowClient().get_run(out.run_id).data.params
    assert float(params["refit_interval_coverage"]) == 0.6
    assert float(params["served_interval_q_low"]) == pytest.approx(expected[0])
    card = (settings.resolved_models_dir / spec.name / "model_card.md").read_text()
    assert "calibrated on the split model's hold-out log-ratio residuals at 60%" in card
    with pytest.raises(ValueError, match="refit_interval_coverage needs a regressor with refit_full"):
        train_service(spec, settings, params={"refit_interval_coverage": 0.6})
    with pytest.raises(ValueError, match=r"refit_interval_coverage must be a number in \(0, 1\)"):
        train_service(spec, settings, params={"refit_full": True, "refit_interval_coverage": 80})


def test_gate_uses_the_logged_holdout_metric_of_a_refit_champion(env: tuple[Settings, Path]) -> None:
    settings, path = env
    spec = synthetic.CLASSIFIER
    first = train_service(spec, settings, params={"refit_full": True})
    second = train_service(spec, settings, params={"refit_full": True})
    gate = second.gate
    assert gate["champion_version"] == first.version
    assert gate["champion"] == first.test["roc_auc"]["value"]
    assert gate["champion_source"] == "logged hold-out metric"
    assert "logged hold-out metric" in gate["reason"] and "different" not in gate["reason"]
    assert second.alias == "champion"  # same setup, same split-fitted hold-out score
    card = (settings.resolved_models_dir / spec.name / "model_card.md").read_text()
    assert "logged hold-out metric" in card
    # A champion fitted on the training split only is re-evaluated, as before; when its run had
    # other data, the scores are still compared and the reason says so.
    third = train_service(spec, settings)
    assert third.gate["champion_source"] == "logged hold-out metric" and third.alias == "champion"
    synthetic.write_csv(path, n=800, seed=1)
    fourth = train_service(spec, settings)
    assert fourth.gate["champion_version"] == third.version
    assert fourth.gate["champion_source"] == "re-evaluated on hold-out"
    assert "re-evaluated on hold-out; its training run used a different data_md5" in fourth.gate["reason"]
