from __future__ import annotations

import pytest

from portfolio.core.settings import Settings
from portfolio.core.training import train_service
from tests.conftest import make_settings
from tests.core import synthetic


@pytest.fixture(scope="session")
def synth_trained(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A state dir with one trained synthetic classifier champion (v1)."""
    root = tmp_path_factory.mktemp("synth")
    (root / "data").mkdir()
    synthetic.write_csv(root / "data" / "synth.csv", n=600)
    settings = make_settings(root / "state", data_dir=root / "data", cv_folds=3)
    train_service(synthetic.CLASSIFIER, settings)
    return settings
