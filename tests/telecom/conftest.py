"""TelecomAI fixtures: one real training run on the real data per test session, in its own
isolated state dir (own MLflow SQLite store, model cache and model cards)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from portfolio.core.settings import Settings
from portfolio.core.training import TrainOutcome
from tests.conftest import make_settings
from tests.helpers import ROOT, require

DATA_FILE = ROOT / "data" / "raw" / "WA_Fn-UseC_-Telco-Customer-Churn.csv"


def require_telecom_data() -> Path:
    require(DATA_FILE.exists(), f"raw data missing: {DATA_FILE.name} (run `make data`)")
    return DATA_FILE


@dataclass
class TrainedTelecom:
    settings: Settings
    outcome: TrainOutcome
    seconds: float

    def env(self) -> dict[str, str]:
        """Environment that points a `portfolio` subprocess at this isolated state."""
        s = self.settings
        return {
            "PORTFOLIO_STATE_DIR": str(s.resolved_state_dir),
            "PORTFOLIO_MODELS_DIR": str(s.resolved_models_dir),
            "MLFLOW_TRACKING_URI": s.tracking_uri,
            "PORTFOLIO_MODEL_POLL_INTERVAL_S": "0",
            "PORTFOLIO_BOOTSTRAP_ROUNDS": str(s.bootstrap_rounds),
            "PORTFOLIO_LOG_LEVEL": "WARNING",
        }


@pytest.fixture(scope="session")
def telecom_trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedTelecom:
    """`train_service(telecom)` on the real data, exactly as `portfolio train telecom` runs it."""
    from portfolio.core.training import train_service
    from portfolio.telecom.spec import SPEC

    require_telecom_data()
    settings = make_settings(tmp_path_factory.mktemp("telecom-state"))
    start = time.monotonic()
    outcome = train_service(SPEC, settings)
    return TrainedTelecom(settings, outcome, time.monotonic() - start)
