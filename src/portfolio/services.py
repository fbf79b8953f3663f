"""The registry of services: name → spec. Adding a service means adding one line here.

A spec's module is imported when its spec is first asked for, not with this module: an API
worker serves one service and imports only that one's model libraries (issue 33: TelecomAI's
imbalanced-learn, with sklearn_compat and the scikit-learn estimator checks it imports, cost a
served BankChurn, Plan or CarVision worker 2-4 MB; tests/core/test_serving_imports.py)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the spec module imports pandas and scikit-learn; a CLI command may need neither
    from portfolio.core.spec import ServiceSpec

# name → the module whose SPEC it is, in the order the services are listed everywhere.
_SPEC_MODULES: dict[str, str] = {
    "bankchurn": "portfolio.bankchurn.spec",
    "carvision": "portfolio.carvision.spec",
    "telecom": "portfolio.telecom.spec",
    "plan": "portfolio.plan.spec",
}


class _Services(Mapping[str, "ServiceSpec"]):
    """``SERVICES``: a read-only mapping whose values are imported on first access."""

    def __getitem__(self, name: str) -> ServiceSpec:
        module = _SPEC_MODULES[name]  # KeyError for an unknown name, as a dict would
        spec: ServiceSpec = importlib.import_module(module).SPEC
        if spec.name != name:
            raise RuntimeError(f"{module}.SPEC is named {spec.name!r}, registered as {name!r}")
        return spec

    def __iter__(self) -> Iterator[str]:
        return iter(_SPEC_MODULES)

    def __len__(self) -> int:
        return len(_SPEC_MODULES)

    def __contains__(self, name: object) -> bool:
        return name in _SPEC_MODULES


SERVICES: Mapping[str, ServiceSpec] = _Services()


def get_spec(name: str) -> ServiceSpec:
    try:
        return SERVICES[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}") from None
