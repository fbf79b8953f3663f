"""An API worker imports only what serving needs: with its model loaded and warm, a request
answered, /metrics scraped (the drift reference fetched) and the champion polled once, the
process has not imported the training- and validation-only libraries nor the registry's client
(each costs every worker memory, measured in issue 33: matplotlib ~26 MB, pandera ~15 MB, the
MLflow client ~32 MB and with the SQLite store SQLAlchemy and Alembic ~51 MB; core/fetch.py
reads the registry in a child process)."""

from __future__ import annotations

from portfolio.core.settings import Settings
from portfolio.services import SERVICES
from tests.support.live import warm_worker_modules

# Imported by training, evaluation plots and data validation; never by an API worker.
TRAINING_ONLY = ("matplotlib", "pandera", "portfolio.core.training", "portfolio.cli")
# The registry's client and what it brings; an API worker reads the registry through core/fetch.py.
REGISTRY_CLIENT = ("mlflow", "sqlalchemy", "alembic", "portfolio.core.registry")
# numba and its compiler (~110 MB a worker): a request's rows are walked in numpy
# (fastpath/trees.py _NUMPY_WALK_STEPS), so they load only with a worker's first batch.
NUMBA = ("numba", "llvmlite")
# pandas' Arrow backend (~36-40 MB a worker): `portfolio serve` keeps it out (core/processes.py).
ARROW = ("pyarrow",)


def assert_serving_imports_only(modules: list[str], service: str) -> None:
    """``modules`` (``warm_worker_modules`` of ``service``) hold no training-only, registry-client
    or numba module, nor another service's spec and the libraries only its model needs
    (portfolio/services.py imports a spec when it is asked for: TelecomAI's imbalanced-learn,
    with sklearn_compat, which imports every scikit-learn estimator)."""
    assert "portfolio.core.serving.api" in modules and "xgboost" in modules  # it really served
    assert f"portfolio.{service}.spec" in modules
    others = tuple(f"portfolio.{name}.spec" for name in SERVICES if name != service)
    if service != "telecom":
        others += ("imblearn", "sklearn_compat")
    groups = (
        ("training-only", TRAINING_ONLY),
        ("registry client", REGISTRY_CLIENT),
        ("numba", NUMBA),
        ("pyarrow", ARROW),
        ("other services'", others),
    )
    for kind, names in groups:
        loaded = sorted(m for m in modules for heavy in names if m == heavy or m.startswith(heavy + "."))
        assert not loaded, f"the API worker imported {kind} modules: {loaded[:20]}"


def test_a_warm_api_worker_imports_no_training_only_library(bank_state: Settings) -> None:
    assert_serving_imports_only(warm_worker_modules(bank_state, "bankchurn"), "bankchurn")


def test_an_operator_may_trade_the_memory_for_numba_walks(bank_state: Settings) -> None:
    """PORTFOLIO_NUMPY_WALK_MAX_STEPS=0: every walk, a request's too, is numba's."""
    modules = warm_worker_modules(bank_state, "bankchurn", PORTFOLIO_NUMPY_WALK_MAX_STEPS="0")
    assert "numba" in modules and "portfolio.core.serving.api" in modules
