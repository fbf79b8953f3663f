"""The core API's contract on a real `portfolio serve` process (BankChurn's spec and model: the
hand-written cases name its fields): schema-driven fuzzing plus hand-written cases that HTTP makes
possible (raw bytes, oversized and streamed bodies, JSON's NaN/Infinity literals, deep nesting).
Nothing is a 500 and every error names the field and the reason. The CLI's bad-file cases:
tests/bankchurn/test_cli_bad_input.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from portfolio.bankchurn.spec import SPEC
from portfolio.core.settings import Settings
from tests.support.clients import over_limit_body, post_http_client, post_urllib
from tests.support.fuzz import assert_fuzz_clean
from tests.support.live import live_api, state_env
from tests.support.parity import assert_served_as_in_process

pytestmark = pytest.mark.integration

RECORD: dict[str, Any] = {f.name: f.example for f in SPEC.fields}
MAX_BATCH = 1000  # PORTFOLIO_MAX_BATCH_SIZE default
MAX_BODY = 2_000_000  # PORTFOLIO_MAX_BODY_BYTES default


@pytest.fixture(scope="module")
def api(bank_state: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_api("bankchurn", state_env(bank_state), tmp_path_factory.mktemp("bank-api")) as live:
        yield live.url


def test_fuzzed_requests_never_5xx_and_4xx_name_field_and_reason(api: str) -> None:
    assert_fuzz_clean(api, "bankchurn")


def _raw(record: dict[str, Any], **replace: str) -> bytes:
    """``record`` as JSON with some values replaced by raw JSON text (NaN, Infinity, …)."""
    text = json.dumps({k: f"@@{k}@@" if k in replace else v for k, v in record.items()})
    for key, literal in replace.items():
        text = text.replace(f'"@@{key}@@"', literal)
    return text.encode()


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _rec(**changes: Any) -> bytes:
    return _json(RECORD | changes)


P, B, E = "/predict", "/predict/batch", "/explain"
DEEP = b"[" * 100_000 + b"]" * 100_000
# (case, endpoint, raw body, field named in the 422, words in its reason)
BAD_BODIES = [
    ("wrong type: text for a number", P, _rec(Age="forty"), "Age", "valid number"),
    ("wrong type: numeric text", P, _rec(Balance="1000.5"), "Balance", "not a string"),
    ("wrong type: boolean for a number", P, _rec(HasCrCard=True), "HasCrCard", "true/false"),
    ("wrong type: number for a category", P, _rec(Geography=3), "Geography", "France"),
    ("wrong type: fraction for an integer", P, _rec(Age=42.5), "Age", "integer"),
    ("out of range: below", P, _rec(CreditScore=100), "CreditScore", "greater than"),
    ("out of range: above", P, _rec(NumOfProducts=9), "NumOfProducts", "less than"),
    ("unknown category", P, _rec(Geography="Atlantis"), "Geography", "'Spain'"),
    ("unknown field", P, _rec(Surname="Hargrave"), "Surname", "unknown field"),
    ("required field missing", P, _json({k: v for k, v in RECORD.items() if k != "Age"}), "Age", "required"),
    ("empty object", P, b"{}", "CreditScore", "required"),
    ("empty body", P, b"", "body", "malformed JSON"),
    ("malformed JSON", P, b'{"CreditScore": 619,', "body", "malformed JSON"),
    ("JSON null", P, b"null", "body", "JSON object"),
    ("NaN literal", P, _raw(RECORD, Balance="NaN"), "Balance", "finite number"),
    ("Infinity literal", P, _raw(RECORD, EstimatedSalary="Infinity"), "EstimatedSalary", "finite number"),
    ("-Infinity literal", P, _raw(RECORD, Balance="-Infinity"), "Balance", "finite number"),
    ("number overflowing a double", P, _raw(RECORD, Balance="1e400"), "Balance", "finite number"),
    ("NaN in an integer field", P, _raw(RECORD, Age="NaN"), "Age", "finite number"),
    ("non-UTF-8 bytes", P, _rec()[:-1] + b', "Surname": "\xff\xfe"}', "body", "malformed JSON"),
    ("non-UTF-8 bytes (/explain)", E, b'{"Geography": "\xff"}', "body", "not UTF-8"),
    ("nesting 100,000 deep", P, DEEP, "body", "malformed JSON"),
    ("nesting 100,000 deep (/explain)", E, DEEP, "body", "nested too deeply"),
    ("empty batch", B, _json({"records": []}), "records", "at least 1"),
    ("batch not a list", B, _json({"records": RECORD}), "records", "valid array"),
    (
        "bad row inside a batch",
        B,
        _json({"records": [RECORD, RECORD | {"Age": 7}]}),
        "records.1.Age",
        "greater",
    ),
    # Over-limit batch: 422 naming `records` (the body is parsed; the batch size is a validation rule).
    (
        "over-limit batch",
        B,
        _json({"records": [RECORD] * (MAX_BATCH + 1)}),
        "records",
        f"at most {MAX_BATCH}",
    ),
]


@pytest.mark.parametrize(
    ("endpoint", "raw", "field", "reason"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
def test_bad_bodies_are_422_naming_field_and_reason(
    api: str, endpoint: str, raw: bytes, field: str, reason: str
) -> None:
    r = httpx.post(f"{api}{endpoint}", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422, r.text
    items = r.json()["detail"]
    assert any(i["field"] == field and reason in i["reason"] for i in items), items


def test_ten_megabyte_bodies_are_413_with_or_without_content_length(api: str) -> None:
    big = b'{"records": [' + b" " * 10_000_000 + b"]}"
    r = httpx.post(
        f"{api}/predict/batch", content=big, headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == [{"field": "body", "reason": f"request body larger than {MAX_BODY} bytes"}]

    def chunks() -> Iterator[bytes]:  # streamed (chunked transfer encoding): no Content-Length to trust
        yield b'{"records": ['
        for _ in range(100):
            yield b" " * 100_000

    r = httpx.post(
        f"{api}/predict", content=chunks(), headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 413, r.text
    assert r.json()["detail"][0]["field"] == "body"
    # The service is unharmed.
    assert httpx.post(f"{api}/predict", json=RECORD, timeout=30).status_code == 200


def test_clients_that_write_the_whole_body_first_read_the_413(api: str) -> None:
    # 32 MiB: more than the socket buffers hold, so the client is still writing when the API
    # answers; without the API's drain, urllib (Connection: close) gets a connection reset.
    big = over_limit_body()
    for post in (post_urllib, post_http_client):
        status, body = post(api, "/predict/batch", big)
        assert status == 413, (post.__name__, body[:200])
        assert json.loads(body)["detail"][0]["field"] == "body"


def test_unknown_paths_and_methods_answer_in_the_error_shape(api: str) -> None:
    r = httpx.get(f"{api}/nope", timeout=10)
    assert r.status_code == 404 and r.json()["detail"] == [{"field": "path", "reason": "Not Found"}]
    r = httpx.get(f"{api}/predict", timeout=10)
    assert r.status_code == 405 and r.json()["detail"][0]["field"] == "method"


def test_served_worker_without_pyarrow_answers_as_in_process(
    api: str, bank_state: Settings, data_dir: Path
) -> None:
    assert_served_as_in_process(api, SPEC, bank_state, data_dir)
