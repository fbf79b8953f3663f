"""Bad input against the real BankChurn API process and the real CLI: schema-driven fuzzing plus
hand-written cases that HTTP and files make possible (raw bytes, oversized and streamed bodies,
JSON's NaN/Infinity literals, deep nesting, broken CSVs). Nothing is a 500, every error names the
field and the reason, and the CLI accounts for every input row."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from portfolio.bankchurn.spec import SPEC
from portfolio.core.settings import Settings
from tests.support.fuzz import assert_fuzz_clean
from tests.support.helpers import ROOT
from tests.support.live import live_api, state_env

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


def test_unknown_paths_and_methods_answer_in_the_error_shape(api: str) -> None:
    r = httpx.get(f"{api}/nope", timeout=10)
    assert r.status_code == 404 and r.json()["detail"] == [{"field": "path", "reason": "Not Found"}]
    r = httpx.get(f"{api}/predict", timeout=10)
    assert r.status_code == 405 and r.json()["detail"][0]["field"] == "method"


# ------------------------------------------------------------------------------------------ CLI
def _predict(settings: Settings, src: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "portfolio"), "predict", "bankchurn", str(src), "--output", str(out)],
        env={**os.environ, **state_env(settings)}, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


HEADER = ",".join(f.name for f in SPEC.fields)
GOOD_ROW = ",".join("" if v is None else str(v) for v in RECORD.values())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (f"{HEADER}\n{GOOD_ROW}\n{GOOD_ROW},1,2,3\n".encode(), "not a readable CSV"),
        (f"{HEADER}\n".encode() + b"\xff\xfe" + GOOD_ROW.encode()[2:] + b"\n", "not UTF-8"),
    ],
    ids=["empty file", "ragged rows", "not UTF-8"],  # missing columns: test_bankchurn.py
)
def test_cli_whole_file_problems_exit_2_with_a_clear_message(
    bank_state: Settings, tmp_path: Path, content: bytes, message: str
) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_bytes(content)
    r = _predict(bank_state, src, out)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in " ".join(r.stderr.split()), r.stderr
    assert not out.exists()


def test_cli_header_only_file_gives_a_header_only_output(bank_state: Settings, tmp_path: Path) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text(HEADER + "\n")
    r = _predict(bank_state, src, out)
    assert r.returncode == 0, r.stderr
    assert "0 rows scored" in r.stdout
    result = pd.read_csv(out)
    assert list(result.columns) == ["probability", "prediction", "error"] and result.empty


def test_cli_row_problems_get_an_error_each_and_every_row_is_accounted_for(
    bank_state: Settings, tmp_path: Path
) -> None:
    bad = {  # row → (column, value, words in its error)
        1: ("Age", "forty", "Age: not a number"),
        3: ("Balance", "inf", "Balance: not a number"),
        4: ("CreditScore", "", "CreditScore: is required"),
        5: ("CreditScore", "NaN", "CreditScore: not a number"),
        7: ("Geography", "Atlantis", "Geography"),
        8: ("Age", "42.5", "Age: must be a whole number"),
        9: ("NumOfProducts", "0", "NumOfProducts"),
        11: ("HasCrCard", "yes", "HasCrCard: not a number"),
    }
    rows = [dict(RECORD) for _ in range(14)]
    for i, (column, value, _) in bad.items():
        rows[i][column] = value
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame(rows).to_csv(src, index=False)
    r = _predict(bank_state, src, out)
    assert r.returncode == 0, r.stderr
    assert f"14 rows scored with bankchurn v1: 6 ok, {len(bad)} failed validation" in " ".join(
        r.stdout.split()
    )
    result = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert len(result) == len(rows)  # every input row has its output row, in order
    for i in range(len(rows)):
        if i in bad:
            assert bad[i][2] in result.at[i, "error"], (i, result.at[i, "error"])
            assert result.at[i, "probability"] == "" and result.at[i, "prediction"] == ""
        else:
            assert result.at[i, "error"] == "" and 0 <= float(result.at[i, "probability"]) <= 1
