"""Shared fixtures: isolated settings (own MLflow SQLite store per test session), the real data,
and one trained BankChurn champion reused by the tests that need a model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from portfolio.core.settings import Settings, get_settings
from tests.support.helpers import ROOT, require

# Tests must never touch the developer's own state or phone home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def make_settings(state: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": ROOT,
        "state_dir": state,
        "models_dir": state / "models",
        "bootstrap_rounds": 100,
        "mlflow_tracking_uri": f"sqlite:///{state / 'mlflow.db'}",
        "model_load_retries": 1,
        "model_load_backoff_s": 0.05,
        "model_poll_interval_s": 0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _fresh_settings_cache() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = ROOT / "data" / "raw"
    require((path / "Churn_Modelling.csv").exists(), "raw data missing: run `make data` (dvc pull)")
    return path


@pytest.fixture(scope="session")
def bank_state(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Settings:
    """A state dir with one trained BankChurn champion (trained once per test session)."""
    from portfolio.bankchurn.spec import SPEC
    from portfolio.core.training.train import train_service

    state = tmp_path_factory.mktemp("bank-state")
    settings = make_settings(state)
    outcome = train_service(SPEC, settings)
    assert outcome.alias == "champion"
    return settings
