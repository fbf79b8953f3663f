"""TelecomAI API fuzzed from its own OpenAPI schema (see tests/support/fuzz.py), on a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fuzz import assert_fuzz_clean
from tests.support.live import TrainedService, live_api, state_env

pytestmark = pytest.mark.integration


def test_fuzzed_requests_never_5xx_and_4xx_name_field_and_reason(
    telecom_trained: TrainedService, tmp_path: Path
) -> None:
    with live_api("telecom", state_env(telecom_trained.settings), tmp_path) as api:
        assert_fuzz_clean(api.url, "telecom")
