"""Bad input files through the real `portfolio predict bankchurn` CLI: whole-file problems exit 2
with a clear message, row problems get an error each, and every input row is accounted for."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from portfolio.bankchurn.spec import SPEC
from portfolio.core.settings import Settings
from tests.support.helpers import ROOT
from tests.support.live import state_env

pytestmark = pytest.mark.integration

RECORD: dict[str, Any] = {f.name: f.example for f in SPEC.fields}


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
