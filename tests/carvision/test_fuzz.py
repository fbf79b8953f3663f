"""CarVision API fuzzed from its own OpenAPI schema (see tests/support/fuzz.py), on the session's real
server."""

from __future__ import annotations

import pytest

from tests.support.fuzz import assert_fuzz_clean

pytestmark = pytest.mark.integration


def test_fuzzed_requests_never_5xx_and_4xx_name_field_and_reason(carvision_api: str) -> None:
    assert_fuzz_clean(carvision_api, "carvision")
