from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from portfolio.bankchurn.spec import SPEC as BANK
from portfolio.core.serving.api import create_app
from portfolio.core.settings import Settings
from portfolio.core.training.train import train_service
from tests.conftest import make_settings
from tests.support import synthetic
from tests.support.helpers import wait_ready


@pytest.fixture(scope="session")
def synth_trained(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A state dir with one trained synthetic classifier champion (v1)."""
    root = tmp_path_factory.mktemp("synth")
    (root / "data").mkdir()
    synthetic.write_csv(root / "data" / "synth.csv", n=600)
    settings = make_settings(root / "state", data_dir=root / "data", cv_folds=3)
    train_service(synthetic.CLASSIFIER, settings)
    return settings


@pytest.fixture(scope="module")
def bank_client(bank_state: Settings) -> Iterator[TestClient]:
    """The BankChurn API, in process, on the session's trained champion (ready)."""
    with TestClient(create_app(BANK, bank_state)) as c:
        wait_ready(c)
        yield c
