"""CarVision API fuzzed from its own OpenAPI schema (see tests/fuzz.py), on the session's real server."""

from __future__ import annotations

import pytest

from tests.fuzz import CASES_PER_SERVICE, EXAMPLES_PER_OPERATION, fuzz_api

pytestmark = pytest.mark.integration


def test_fuzzed_requests_never_5xx_and_4xx_name_field_and_reason(carvision_api: str) -> None:
    report = fuzz_api(carvision_api, EXAMPLES_PER_OPERATION)
    print(f"carvision fuzz: {report.summary()}")
    assert report.cases >= CASES_PER_SERVICE, report.summary()
    assert not [s for s in report.by_status if s >= 500], report.summary()
    assert not report.failures, "\n\n".join(report.failures[:5])
