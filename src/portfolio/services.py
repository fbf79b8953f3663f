"""The registry of services: name → spec. Adding a service means adding one line here."""

from __future__ import annotations

from portfolio.bankchurn.spec import SPEC as BANKCHURN
from portfolio.carvision.spec import SPEC as CARVISION
from portfolio.core.spec import ServiceSpec
from portfolio.plan.spec import SPEC as PLAN
from portfolio.telecom.spec import SPEC as TELECOM

SERVICES: dict[str, ServiceSpec] = {s.name: s for s in (BANKCHURN, CARVISION, TELECOM, PLAN)}


def get_spec(name: str) -> ServiceSpec:
    try:
        return SERVICES[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}") from None
