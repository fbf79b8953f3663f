from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pydantic
import pytest

from portfolio.core.schema import (
    Field,
    MissingColumnsError,
    pandera_schema,
    parse_date,
    plain_batch_decoder,
    plain_dict_validators,
    plain_record_decoder,
    request_model,
    validate_frame,
)
from tests.support.synthetic import FIELDS


def raw(rows: list[dict[str, object]]) -> pd.DataFrame:
    return pd.DataFrame(rows).astype(str).replace({"nan": None, "None": None})


def test_valid_rows_have_no_error_and_values_are_typed() -> None:
    df = raw([{"x1": "0.5", "x2": "3", "color": "red", "noise": "1e-3"}])
    res = validate_frame(df, FIELDS)
    assert res.errors.tolist() == [""]
    assert res.frame["x1"].dtype == "float64"
    assert res.frame.loc[0, "x2"] == 3.0


def test_every_row_is_accounted_for_with_field_and_reason() -> None:
    df = raw(
        [
            {"x1": "0.5", "x2": "3", "color": "red", "noise": "0"},  # ok
            {"x1": "abc", "x2": "3", "color": "red", "noise": "0"},  # not a number
            {"x1": "50", "x2": "3", "color": "red", "noise": "0"},  # out of range
            {"x1": "0", "x2": "3", "color": "purple", "noise": "0"},  # unknown category
            {"x1": "0", "x2": "2.5", "color": "red", "noise": "0"},  # not a whole number
            {"x1": None, "x2": None, "color": "red", "noise": "0"},  # required missing; x2 nullable
            {"x1": "inf", "x2": "1", "color": "red", "noise": "0"},  # infinity
        ]
    )
    res = validate_frame(df, FIELDS)
    errs = res.errors.tolist()
    assert len(errs) == len(df)
    assert errs[0] == ""
    assert errs[1].startswith("x1: not a number")
    assert "x1" in errs[2] and "between -10 and 10" in errs[2]
    assert "color" in errs[3] and "one of" in errs[3]
    assert "x2" in errs[4] and "whole number" in errs[4]
    assert errs[5] == "x1: is required (missing value)"
    assert errs[6].startswith("x1: not a number")
    assert res.n_invalid == 6
    summary = res.summary()
    assert summary["invalid_rows"] == 6 and summary["examples"]


def test_missing_columns_is_a_file_level_error() -> None:
    with pytest.raises(MissingColumnsError) as exc:
        validate_frame(pd.DataFrame({"x1": ["1"]}), FIELDS)
    assert exc.value.missing == ["x2", "color", "noise"]


def test_pandera_schema_carries_ranges_and_categories() -> None:
    schema = pandera_schema(FIELDS)
    assert set(schema.columns) == {f.name for f in FIELDS}
    assert schema.columns["x2"].nullable and not schema.columns["x1"].nullable
    checks = " ".join(str(c) for c in schema.columns["color"].checks)
    assert "isin" in checks


def test_request_model_matches_the_data_schema() -> None:
    Model = request_model("Rec", FIELDS)
    ok = Model(x1=0.5, x2=None, color="red", noise=0)
    assert ok.model_dump()["x2"] is None
    for bad, field in [
        ({"x1": 11}, "x1"),
        ({"color": "purple"}, "color"),
        ({"x1": math.nan}, "x1"),
        ({"x1": math.inf}, "x1"),
        ({"extra": 1}, "extra"),
    ]:
        with pytest.raises(pydantic.ValidationError) as exc:
            Model(**({"x1": 0.5, "x2": 1, "color": "red", "noise": 0} | bad))
        assert field in str(exc.value)


def test_numeric_frames_pass_through_coercion_unchanged() -> None:
    df = pd.DataFrame({"x1": [0.1, 0.2], "x2": [1, np.nan], "color": ["red", "blue"], "noise": [0.0, 0.0]})
    res = validate_frame(df, FIELDS)
    assert res.n_invalid == 0
    assert np.isnan(res.frame.loc[1, "x2"])


def test_request_numbers_reject_booleans_and_strings_and_nullable_ranges_are_documented() -> None:
    """JSON true/false and "12" are not numbers (pydantic's lax mode would coerce them), and a
    nullable field's range shows in the OpenAPI schema (the fuzzer generates from it)."""
    import json

    Model = request_model("Rec", FIELDS)
    good = {"x1": 0.5, "x2": 1, "color": "red", "noise": 0}
    for bad in ({"x1": True}, {"x2": False}, {"x1": "0.5"}, {"x2": "1"}):
        with pytest.raises(pydantic.ValidationError, match="valid number, not"):
            Model.model_validate_json(json.dumps(good | bad))
    assert Model.model_validate(good | {"x2": 2.0}).model_dump()["x2"] == 2  # a whole float is an int
    x2 = Model.model_json_schema()["properties"]["x2"]
    assert {"type": "integer", "minimum": 0, "maximum": 100} in x2["anyOf"], x2


def test_dates_outside_the_representable_range_are_row_errors_not_crashes() -> None:
    import re

    from portfolio.core.schema import Field

    fields = (Field("d", "date", date_format="%m/%d/%Y", nullable=True),)
    res = validate_frame(pd.DataFrame({"d": ["6/23/2018", "1/1/0001", "12/31/9999", None]}), fields)
    assert res.errors.str.startswith("d: not a date").tolist() == [False, True, True, False]
    Model = request_model("Rec", fields)
    with pytest.raises(pydantic.ValidationError, match="must be between"):
        Model(d="01/01/0001")
    pattern = Model.model_json_schema()["properties"]["d"]["anyOf"][0]["pattern"]
    assert re.search(pattern, "6/23/2018") and re.search(pattern, "12/31/2261")
    assert not any(re.search(pattern, d) for d in ("2018-06-23", "2/30/2020", "4/31/2020", "1/1/0001"))


DATE_CASES = [
    "1/5/2019", "01/05/2019", "1/05/2019", "12/31/2019", "2/29/2020", "1/1/1677", "12/31/2262",
    "13/1/2019", "0/5/2019", "1/0/2019", "2/30/2019", "2/29/2019", "1/5/19", "1/5/02019",
    "001/5/2019", " 1/5/2019", "1/5/2019 ", "1/5/2019\n", "1/5/2019 00:00", "+1/5/2019", "1//2019",
    "", "\u0661/\u0665/\u0662\u0660\u0661\u0669",  # Arabic-Indic digits
    "2019-01-05", "jan/5/2019",
]  # fmt: skip


@pytest.mark.parametrize("fmt", ["%m/%d/%Y", "%Y-%m-%d", "%d.%m.%Y"])
def test_parse_date_accepts_exactly_what_pandas_accepts(fmt: str) -> None:
    """The API's one-value date parser (strptime) and the files' parser (pd.to_datetime with the
    same format) must agree on every string, valid or not, and on the date."""
    cases = [*DATE_CASES, pd.Timestamp(2019, 1, 5).strftime(fmt), "5.1.2019", "2019-1-5"]
    for text in cases:
        expected = pd.to_datetime(text, format=fmt, errors="coerce")
        got = parse_date(text, fmt)
        if pd.isna(expected):
            assert got is None, (fmt, text, got)
        else:
            assert got is not None and pd.Timestamp(got) == expected, (fmt, text, got, expected)


def _candidates(f: Field) -> list[object]:
    """Values to try in a field: valid ones, ones the request models convert, invalid ones."""
    values: list[object] = [None, True, [], {}]
    if f.kind in ("int", "float"):
        lo, hi = f.min if f.min is not None else -1e6, f.max if f.max is not None else 1e6
        values += [lo, hi, (lo + hi) / 2, int(lo), str(lo), lo - 1, hi + 1, 2**70, -(2**70), 1e300]
        values += [float(int(lo)), int(hi) + 0.5]  # 5.0 for an int: converted; 5.5: an error
    elif f.kind == "category" and f.categories:
        values += [*f.categories, "nope", "", 1, f.categories[0].upper()]
    elif f.kind == "date":
        values += [f.example, f" {f.example} ", "13/45/2019", "02/30/2019", "2019-01-06", 12, ""]
    else:
        values += ["x", "x" * 200, "x" * 201, "", 7, f.example]
    return values


def _fast_against_models(
    decode: Any, validate: Any, texts: list[bytes], fields: tuple[Field, ...]
) -> tuple[int, int]:
    """Each body through a fast decoder and through the request models (``validate``: the
    validated records). The decoder may only accept what the models accept, with the same
    columns. Returns how many bodies it took, and how many only the models did."""
    from portfolio.core.fastpath.columns import to_columns

    fast_taken = converted = 0
    for text in texts:
        fast = decode(text)
        try:
            slow = validate(text)
        except pydantic.ValidationError:
            assert fast is None, text  # the fast path accepted something the models reject
            continue
        if fast is None:
            converted += 1
            continue
        fast_taken += 1
        assert fast.rows == len(slow) and all(len(v) == fast.rows for v in fast.values.values())
        got, want = to_columns(None, fields, fast.values), to_columns(slow, fields)
        for f in fields:
            if f.kind in ("int", "float", "date"):
                assert np.array_equal(got[f.name], want[f.name], equal_nan=True), (f.name, text)
            else:
                assert got[f.name].tolist() == want[f.name].tolist(), (f.name, text)
    return fast_taken, converted


@pytest.mark.parametrize("service", ["bankchurn", "carvision", "telecom", "synthetic"])
def test_plainly_valid_batches_are_accepted_by_the_request_models_with_the_same_columns(service: str) -> None:
    """``plain_batch_decoder`` (the batch endpoint's fast path) may only accept what the
    request models accept, and must give the same columns; anything else it leaves to them."""
    from portfolio.services import SERVICES

    fields = FIELDS if service == "synthetic" else SERVICES[service].fields
    record = request_model("Record", fields)
    batch = pydantic.create_model(
        "Batch",
        __config__=pydantic.ConfigDict(extra="forbid"),
        records=(list[record], pydantic.Field(..., min_length=1, max_length=4)),  # type: ignore[valid-type]
    )
    _, batch_validator = plain_dict_validators(record, batch)
    base = {f.name: f.example for f in fields}
    variants: list[dict[str, object]] = []
    for f in fields:
        variants += [{**base, f.name: v} for v in _candidates(f)]
        left_out = {k: v for k, v in base.items() if k != f.name}
        variants += [left_out, {**left_out, f"{f.name}_": 1}]  # left out; instead of an unknown one
    variants.append({**base, "unknown": 1})
    bodies: list[object] = [{"records": [base]}, {"records": []}, {"records": [base] * 5}, {"records": base}]
    bodies += [{"records": [base], "more": 1}, {"records": [1]}, [base], {"records": [base, base]}]
    rng = np.random.default_rng(0)
    bodies += [{"records": [base, v]} for v in variants]
    bodies += [{"records": [variants[i] for i in rng.choice(len(variants), 3)]} for _ in range(200)]
    decode = plain_batch_decoder(fields, 4)
    texts = [json.dumps(body).encode() for body in bodies]
    texts += [b"{", b"", b'{"records": [' + json.dumps(base).encode() + b"]} x", b"null"]  # not JSON
    validate_batch = lambda text: batch_validator.validate_json(text)["records"]  # noqa: E731
    fast_taken, converted = _fast_against_models(decode, validate_batch, texts, fields)
    # Both paths were exercised: plainly valid batches, and ones only the models accept (5.0 for
    # an int, a date with spaces, ...).
    assert fast_taken >= 20 and converted >= 1, (fast_taken, converted)

    # One record (``/predict``'s ``plain_record_decoder``): the same rule against the record model.
    record_validator, _ = plain_dict_validators(record, batch)
    decode_one = plain_record_decoder(fields)
    singles = [json.dumps(v).encode() for v in [base, *variants]]
    singles += [b"{", b"", json.dumps(base).encode() + b" x", b"null", b"[]", json.dumps([base]).encode()]
    validate_one = lambda text: [record_validator.validate_json(text)]  # noqa: E731
    fast_taken, converted = _fast_against_models(decode_one, validate_one, singles, fields)
    assert fast_taken >= 5 and converted >= 1, (fast_taken, converted)
