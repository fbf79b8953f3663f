from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from portfolio.bankchurn.spec import SPEC as BANK
from portfolio.core.serving.api import create_app
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec
from portfolio.core.training.train import train_service
from tests.conftest import make_settings
from tests.support import synthetic
from tests.support.helpers import wait_ready


def _train_synthetic(tmp_path_factory: pytest.TempPathFactory, spec: ServiceSpec) -> Settings:
    root = tmp_path_factory.mktemp(spec.name)
    (root / "data").mkdir()
    synthetic.write_csv(root / "data" / "synth.csv", n=600)
    settings = make_settings(root / "state", data_dir=root / "data", cv_folds=3)
    train_service(spec, settings)
    return settings


@pytest.fixture(scope="session")
def synth_trained(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A state dir with one trained synthetic classifier champion (v1)."""
    return _train_synthetic(tmp_path_factory, synthetic.CLASSIFIER)


@pytest.fixture(scope="session")
def synth_regressor(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A state dir with one trained synthetic regressor champion (v1)."""
    return _train_synthetic(tmp_path_factory, synthetic.REGRESSOR)


@pytest.fixture(scope="module")
def bank_client(bank_state: Settings) -> Iterator[TestClient]:
    """The BankChurn API, in process, on the session's trained champion (ready)."""
    with TestClient(create_app(BANK, bank_state)) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="session")
def synth_versions(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Its own state dir with two registered versions of the synthetic classifier: v1 (trained,
    champion) and v2 (the same artifact registered again, no alias). Tests that move the alias
    put it back."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from portfolio.core import registry

    root = tmp_path_factory.mktemp("synth-versions")
    (root / "data").mkdir()
    synthetic.write_csv(root / "data" / "synth.csv", n=300)
    settings = make_settings(root / "state", data_dir=root / "data", cv_folds=2)
    assert train_service(synthetic.CLASSIFIER, settings).version == "1"
    v1 = MlflowClient().get_model_version(synthetic.CLASSIFIER.name, "1")
    v2 = mlflow.register_model(v1.source, synthetic.CLASSIFIER.name, tags=dict(v1.tags))
    assert str(v2.version) == "2" and str(registry.champion_version(synthetic.CLASSIFIER.name).version) == "1"  # type: ignore[union-attr]
    return settings
