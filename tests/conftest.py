"""Shared fixtures: isolated settings (own MLflow SQLite store per test session), the real data,
and one trained BankChurn champion reused by the tests that need a model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portfolio.core.settings import Settings, get_settings
from tests.support.helpers import ROOT, require

# Tests must never touch the developer's own state or phone home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


# pytest-xdist (`make test` runs `-n 2 --dist loadscope --no-loadscope-reorder`): the tests that
# share a process's fixtures run in one worker. The unit of work is a test file (its module
# fixtures start once), except that the files sharing a session fixture that starts a server are
# one unit (the deploy stack: PostgreSQL + MLflow server + training; the CarVision API), and the
# MLflow consumer checks are one unit per service (its consumer environments; the services' real
# trainings are shared by both workers through tests.support.live.train_real). xdist's own
# `loadgroup` marks do not reach its scheduler under pytest 9.2 (it renames `item._nodeid`, which
# pytest 9.2 no longer reads), so the units are named here, from the node id. A file missing from
# these tables only costs its session fixtures a second start in the other worker.
_PER_SERVICE = "tests/integration/test_mlflow_native.py"
_UNITS = {
    "tests/deploy/test_container_entrypoint.py": "deploy-stack",
    "tests/deploy/test_gateway.py": "deploy-stack",
    "tests/deploy/test_tracking_postgres.py": "deploy-stack",
    "tests/carvision/": "carvision",
}
# The longest units first (measured on the 2-core VM: from ~2 to ~9 min each, training included),
# so that no long unit starts last while the other worker idles; the rest keep the file order.
_LONGEST_FIRST = [
    f"{_PER_SERVICE}[carvision]",
    "deploy-stack",
    f"{_PER_SERVICE}[bankchurn]",
    f"{_PER_SERVICE}[telecom]",
    f"{_PER_SERVICE}[plan]",
    "carvision",
    "tests/bankchurn/test_bankchurn.py",
    "tests/bankchurn/test_faults.py",
    "tests/integration/test_prometheus_live.py",
    "tests/integration/test_mlflow_server.py",
    "tests/integration/test_stack.py",
    "tests/integration/test_dvc_pipeline.py",
]


def work_unit(nodeid: str) -> str:
    """The xdist unit of work of the test ``nodeid`` (see above)."""
    path = nodeid.split("::")[0]
    if path == _PER_SERVICE and nodeid.endswith("]"):
        return f"{path}[{nodeid.rsplit('[', 1)[1]}"
    for prefix, unit in _UNITS.items():
        if path.startswith(prefix):
            return unit
    return path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope` with this file's units of work instead of xdist's (module or class)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return Units(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the longest units first (the workers collect, and xdist sends the units in
    their collection order); a one-process run keeps pytest's order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {unit: i for i, unit in enumerate(_LONGEST_FIRST)}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(work_unit(item.nodeid), len(rank)), order[id(item)]))


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
    """A state dir with one trained BankChurn champion: the session's real BankChurn training
    (``train_real``, shared with the tests that train every service). No test writes a version or
    an alias into it (tests/bankchurn/test_faults.py promotes in a copy)."""
    from portfolio.bankchurn.spec import SPEC
    from tests.support.live import train_real

    trained = train_real(SPEC, tmp_path_factory)
    assert trained.outcome.alias == "champion"
    return trained.settings
