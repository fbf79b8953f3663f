"""CarVision fixtures: one real training run on the real data per test session (isolated state:
own MLflow SQLite store, model cache and model card), and one real API process serving it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from portfolio.core.processes import bin_path, free_port, start, stop, wait_http
from portfolio.core.settings import Settings
from portfolio.core.training import TrainOutcome
from tests.conftest import make_settings
from tests.helpers import ROOT, require

DATA_FILE = ROOT / "data" / "raw" / "vehicles_us.csv"

RECORD = {
    "model_year": 2011, "model": "bmw x5", "condition": "good", "cylinders": 6, "fuel": "gas",
    "odometer": 145000.0, "transmission": "automatic", "type": "SUV", "paint_color": None, "is_4wd": 1,
}  # fmt: skip


def require_carvision_data() -> Path:
    require(DATA_FILE.exists(), f"raw data missing: {DATA_FILE.name} (run `make data`)")
    return DATA_FILE


@dataclass
class TrainedCarvision:
    settings: Settings
    outcome: TrainOutcome
    seconds: float

    def env(self, **extra: str) -> dict[str, str]:
        """Environment that points a `portfolio` subprocess (or the dashboard) at this state."""
        s = self.settings
        return {
            "PORTFOLIO_STATE_DIR": str(s.resolved_state_dir),
            "PORTFOLIO_MODELS_DIR": str(s.resolved_models_dir),
            "MLFLOW_TRACKING_URI": s.tracking_uri,
            "PORTFOLIO_MODEL_POLL_INTERVAL_S": "0",
            "PORTFOLIO_BOOTSTRAP_ROUNDS": str(s.bootstrap_rounds),
            "PORTFOLIO_LOG_LEVEL": "WARNING",
            **extra,
        }

    def apply_env(self, monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
        for key, value in self.env(**extra).items():
            monkeypatch.setenv(key, value)
        for key in ("CARVISION_API_URL", "PORTFOLIO_CARVISION_API_URL", "PORTFOLIO_API_KEYS"):
            if key not in extra:
                monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def carvision_trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedCarvision:
    """`train_service(carvision)` on the real data, exactly as `portfolio train carvision` runs it."""
    from portfolio.carvision.spec import SPEC
    from portfolio.core.training import train_service

    require_carvision_data()
    settings = make_settings(tmp_path_factory.mktemp("carvision-state"))
    begin = time.monotonic()
    outcome = train_service(SPEC, settings)
    return TrainedCarvision(settings, outcome, time.monotonic() - begin)


@pytest.fixture(scope="session")
def carvision_api(
    carvision_trained: TrainedCarvision, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real `portfolio serve carvision` (uvicorn) on a free loopback port; yields its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("carvision-api") / "api.log"
    env = carvision_trained.env(PORTFOLIO_API_KEYS="")
    proc = start(
        [bin_path("portfolio"), "serve", "carvision", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        log_file=log,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ready", timeout=180, proc=proc)
    except Exception:
        stop(proc)
        raise AssertionError(f"carvision API did not start:\n{log.read_text()[-3000:]}") from None
    yield url
    stop(proc)
