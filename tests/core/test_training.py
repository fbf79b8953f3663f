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
from portfolio.core.training import train_service
from tests.conftest import make_settings
from tests.core import synthetic


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

    monkeypatch.setattr("portfolio.core.training.permutation_importance", boom)
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
