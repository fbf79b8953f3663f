"""TelecomAI API fuzzed from its own OpenAPI schema (see tests/fuzz.py), on a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz import CASES_PER_SERVICE, EXAMPLES_PER_OPERATION, fuzz_api
from tests.live import live_api, state_env
from tests.telecom.conftest import TrainedTelecom

pytestmark = pytest.mark.integration


def test_fuzzed_requests_never_5xx_and_4xx_name_field_and_reason(
    telecom_trained: TrainedTelecom, tmp_path: Path
) -> None:
    with live_api("telecom", state_env(telecom_trained.settings), tmp_path) as api:
        report = fuzz_api(api.url, EXAMPLES_PER_OPERATION)
    print(f"telecom fuzz: {report.summary()}")
    assert report.cases >= CASES_PER_SERVICE, report.summary()
    assert not [s for s in report.by_status if s >= 500], report.summary()
    assert not report.failures, "\n\n".join(report.failures[:5])
