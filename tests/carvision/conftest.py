"""CarVision fixtures: one real training run on the real data per test session, and one real API
process serving it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from portfolio.carvision.spec import SPEC
from tests.support.helpers import ROOT
from tests.support.live import TrainedService, live_api, train_real

DATA_FILE = ROOT / "data" / "raw" / SPEC.data_file

RECORD = {
    "model_year": 2011, "model": "bmw x5", "condition": "good", "cylinders": 6, "fuel": "gas",
    "odometer": 145000.0, "transmission": "automatic", "type": "SUV", "paint_color": None, "is_4wd": 1,
}  # fmt: skip


@pytest.fixture(scope="session")
def carvision_trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedService:
    return train_real(SPEC, tmp_path_factory)


@pytest.fixture(scope="session")
def carvision_api(
    carvision_trained: TrainedService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real `portfolio serve carvision` (uvicorn) on a free loopback port; yields its URL."""
    with live_api("carvision", carvision_trained.env(), tmp_path_factory.mktemp("carvision-api")) as api:
        yield api.url
