"""TelecomAI fixtures: one real training run on the real data per test session."""

from __future__ import annotations

import pytest

from portfolio.telecom.spec import SPEC
from tests.support.helpers import ROOT
from tests.support.live import TrainedService, train_real

DATA_FILE = ROOT / "data" / "raw" / SPEC.data_file


@pytest.fixture(scope="session")
def telecom_trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedService:
    return train_real(SPEC, tmp_path_factory)
