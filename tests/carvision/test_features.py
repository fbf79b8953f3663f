"""CarVision cleaning rules and feature transformers on small synthetic frames (no real data)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from portfolio.carvision.cleaning import PRICE_MAX, PRICE_MIN, TRAINING_RULES, clean_training
from portfolio.carvision.features import CategoryCodes, PriceStats, VehicleFeatures, group_keys
from portfolio.carvision.spec import SPEC
from portfolio.core.fastpath.columns import frame_to_columns, to_columns
from portfolio.core.fastpath.pipeline import compile_pipeline
from portfolio.core.schema import request_model, validate_frame

MODELS = ["ford f-150", "toyota camry", "honda civic", "chevrolet silverado 1500", "jeep wrangler"]


def raw_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Raw text rows shaped like vehicles_us.csv (price included), with every kind of gap."""
    rng = np.random.default_rng(seed)
    year = rng.integers(1995, 2019, n)
    odo = rng.integers(5_000, 250_000, n)
    model = rng.choice(MODELS, n)
    base = np.where(np.char.startswith(model.astype(str), "ford"), 30_000, 20_000)
    price = np.maximum(base * 0.9 ** (2019 - year) - odo * 0.03, 1_500).round(-2)
    month = rng.integers(1, 13, n)
    frame = pd.DataFrame(
        {
            "price": price.astype(int).astype(str),
            "model_year": year.astype(str),
            "model": model,
            "condition": rng.choice(["good", "excellent", "like new", "fair"], n),
            "cylinders": rng.choice(["4", "6", "8"], n),
            "fuel": "gas",
            "odometer": odo.astype(str),
            "transmission": "automatic",
            "type": rng.choice(["sedan", "pickup", "SUV"], n),
            "paint_color": rng.choice(["white", "black", ""], n),
            "is_4wd": rng.choice(["1", ""], n),
            "date_posted": [f"{m}/{d}/2018" for m, d in zip(month, rng.integers(1, 28, n), strict=True)],
            "days_listed": rng.integers(0, 100, n).astype(str),
        }
    )
    frame.loc[::17, "model_year"] = ""
    frame.loc[::13, "odometer"] = ""
    frame.loc[::11, "cylinders"] = ""
    return frame.replace({"": None})


def typed(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    result = validate_frame(frame, SPEC.fields)
    assert result.n_invalid == 0, result.summary()
    return result.frame, pd.to_numeric(frame["price"])


# ------------------------------------------------------------------------------------ cleaning
def test_cleaning_rules_exclude_placeholder_and_extreme_prices_with_counts() -> None:
    df = pd.DataFrame({"price": [1.0, 999.0, 1_000.0, 25_000.0, 100_000.0, 100_001.0, 375_000.0, 123.0]})
    kept, report = clean_training(df)
    assert kept["price"].tolist() == [1_000.0, 25_000.0, 100_000.0]  # the range ends are kept
    assert dict(report.excluded_by_rule) == {"price_below_1000": 3, "price_above_100000": 2}
    assert (report.rows_in, report.rows_out) == (8, 3)
    assert (PRICE_MIN, PRICE_MAX) == (1_000.0, 100_000.0)
    assert [r.name for r in TRAINING_RULES] == list(report.excluded_by_rule)


def test_cleaning_keeps_rows_with_missing_inputs() -> None:
    """Missing model_year/cylinders/odometer/paint_color never exclude a row: the pipeline handles them."""
    df = pd.DataFrame(
        {"price": [5_000.0, 6_000.0], "model_year": [np.nan, 2010.0], "odometer": [np.nan, np.nan]}
    )
    kept, report = clean_training(df)
    assert len(kept) == 2 and sum(report.excluded_by_rule.values()) == 0


def test_core_training_loader_applies_the_rules(tmp_path: Any) -> None:
    from portfolio.core.data import load_training_data
    from tests.conftest import make_settings

    frame = raw_frame(60)
    frame.loc[0, "price"] = "1"
    frame.loc[1, "price"] = "250000"
    frame.loc[2, "condition"] = "mint"  # a schema error, reported by the core (not a cleaning rule)
    path = tmp_path / "vehicles.csv"
    frame.to_csv(path, index=False)
    ds = load_training_data(SPEC, make_settings(tmp_path / "state"), path)
    report = ds.report()
    assert report["cleaning"]["excluded_by_rule"] == {"price_below_1000": 1, "price_above_100000": 1}
    assert report["schema"]["invalid_rows"] == 1
    assert report["rows_used"] == 57


# ------------------------------------------------------------------------------------ features
def test_vehicle_features_derive_age_make_and_mileage() -> None:
    X, _ = typed(raw_frame(50))
    X = X.copy()
    X.loc[0, ["model_year", "odometer", "date_posted", "model"]] = [
        2010.0,
        80_000.0,
        pd.Timestamp("2018-07-02"),
        "Ford  F-150",
    ]
    X.loc[1, ["model_year", "date_posted", "days_listed", "is_4wd", "paint_color"]] = [
        2018.0,
        pd.NaT,
        np.nan,
        np.nan,
        None,
    ]
    X.loc[2, ["model_year", "odometer"]] = [np.nan, 50_000.0]
    vf = VehicleFeatures().fit(X)
    out = vf.transform(X)
    # Age at posting: 2018-07-02 is ~2018.50, so ~8.5 years; miles per year = 80k / age.
    assert out.loc[0, "vehicle_age"] == pytest.approx(8.5, abs=0.01)
    assert out.loc[0, "miles_per_year"] == pytest.approx(80_000 / out.loc[0, "vehicle_age"])
    assert out.loc[0, "make"] == "ford" and out.loc[0, "model"] == "ford f-150"
    # Missing posting date → the training median date; missing days_listed → training median.
    median_day = (X["date_posted"].dropna().astype("int64") / 86_400e9).median()
    assert vf.reference_day_ == pytest.approx(median_day)
    assert out.loc[1, "posted_day"] == 0.0
    assert out.loc[1, "days_listed"] == vf.days_listed_fill_ == X["days_listed"].median()
    assert out.loc[1, "is_4wd"] == 0.0  # empty is_4wd means "not 4WD"
    assert out.loc[1, "paint_color"] == "unknown"
    # A car posted in (or before) its model year: age ≥ 0, mileage per year over at least half a year.
    assert out.loc[1, "vehicle_age"] >= 0
    # Unknown model year → unknown age and mileage per year (the trees route missing values).
    assert np.isnan(out.loc[2, "vehicle_age"]) and np.isnan(out.loc[2, "miles_per_year"])
    assert out["condition_score"].between(0, 5).all()
    # A batch maps each distinct model and condition once; a request value by value: the same.
    for i in (0, 1, 7):
        pd.testing.assert_frame_equal(vf.transform(X.iloc[[i]]), out.iloc[[i]])


def test_price_stats_are_cross_fitted_during_training() -> None:
    """While fitting, a row's statistics never include its own price (no target leakage);
    at prediction time they use every training row."""
    X, y = typed(raw_frame(300))
    feats = VehicleFeatures().fit(X).transform(X)
    ps = PriceStats(folds=5)
    fitted = ps.fit_transform(feats, y)
    logy = np.log(y.to_numpy())
    keys = group_keys({c: feats[c].to_numpy() for c in feats.columns}, ["model"])
    for i in range(0, 300, 37):
        same = keys == keys[i]
        # The cross-fitted mean differs from the in-sample mean that includes row i.
        assert fitted.loc[i, "model_logprice"] != pytest.approx(logy[same].mean())
        assert fitted.loc[i, "model_n"] < same.sum()
    served = ps.transform(feats)
    for i in range(0, 300, 37):
        same = keys == keys[i]
        assert served.loc[i, "model_logprice"] == pytest.approx(logy[same].mean())
        assert served.loc[i, "model_n"] == same.sum()
    # An unseen model has no statistics (NaN mean, zero count).
    new = feats.head(1).assign(model="tesla model s", make="tesla")
    out = ps.transform(new)
    assert np.isnan(out.loc[0, "model_logprice"]) and out.loc[0, "model_n"] == 0


def test_price_stats_find_a_reposted_listing() -> None:
    X, y = typed(raw_frame(200))
    feats = VehicleFeatures().fit(X).transform(X)
    ps = PriceStats().fit(feats, y)
    repost = feats.iloc[[7]].copy()
    repost["days_listed"] = 3.0  # a re-post changes the listing metadata, not the car
    out = ps.transform(repost)
    assert out.iloc[0]["same_listing_n"] >= 1
    assert np.exp(out.iloc[0]["same_listing_logprice"]) == pytest.approx(y.iloc[7], rel=0.35)


def test_category_codes_map_unseen_and_missing_to_nan() -> None:
    frame = pd.DataFrame({"fuel": ["gas", "diesel", "gas"], "x": [1.0, 2.0, 3.0]})
    cc = CategoryCodes(columns=("fuel",)).fit(frame)
    out = cc.transform(pd.DataFrame({"fuel": ["diesel", "hydrogen", None], "x": [5.0, 6.0, 7.0]}))
    assert out["fuel"].iloc[0] == 0.0 and np.isnan(out["fuel"].iloc[1]) and np.isnan(out["fuel"].iloc[2])
    assert out["x"].tolist() == [5.0, 6.0, 7.0]


@pytest.mark.parametrize("candidate", list(SPEC.candidates))
def test_one_code_path_pipeline_and_compiled_fast_path_agree(candidate: str) -> None:
    """Training/batch (DataFrame pipeline) and the API's compiled path give the same prices."""
    X, y = typed(raw_frame(400))
    pipe = SPEC.candidates[candidate]({"n_estimators": 20}).fit(X, y)
    fast = compile_pipeline(pipe, "regression")
    expected = pipe.predict(X.head(50))
    assert np.allclose(fast(frame_to_columns(X.head(50), SPEC.fields)), expected, rtol=1e-5)
    # The API path: raw JSON-like records (dates as M/D/YYYY strings, None for gaps).
    records = [
        {
            **{k: (None if pd.isna(v) else v) for k, v in row.items() if k != "date_posted"},
            "date_posted": None if pd.isna(row["date_posted"]) else f"{row['date_posted']:%-m/%-d/%Y}",
        }
        for row in X.head(50).to_dict(orient="records")
    ]
    assert np.allclose(fast(to_columns(records, SPEC.fields)), expected, rtol=1e-5)
    assert (expected > 0).all()


def test_request_model_checks_the_date_format_and_optional_fields() -> None:
    Record = request_model("CarvisionRecord", SPEC.fields)
    base = {
        "model_year": 2011, "model": "bmw x5", "condition": "good", "cylinders": 6, "fuel": "gas",
        "odometer": 145000, "transmission": "automatic", "type": "SUV", "paint_color": None, "is_4wd": None,
    }  # fmt: skip
    ok = Record.model_validate(base).model_dump()
    assert ok["date_posted"] is None and ok["days_listed"] is None  # optional
    assert (
        Record.model_validate(base | {"date_posted": "6/23/2018"}).model_dump()["date_posted"] == "6/23/2018"
    )
    with pytest.raises(ValidationError) as err:
        Record.model_validate(base | {"date_posted": "2018-23-06"})
    assert err.value.errors()[0]["loc"] == ("date_posted",)
    assert "M/D/YYYY" in str(err.value) or "%m/%d/%Y" in str(err.value)
    with pytest.raises(ValidationError):
        Record.model_validate(base | {"price": 5000})  # the target is not an input
    assert "price" not in SPEC.feature_names
    assert set(SPEC.feature_names) == {
        "model_year", "model", "condition", "cylinders", "fuel", "odometer", "transmission", "type",
        "paint_color", "is_4wd", "date_posted", "days_listed",
    }  # fmt: skip


def test_group_keys_are_the_same_for_small_and_large_inputs() -> None:
    """Small requests mix keys with Python ints, large ones with numpy: the keys must agree."""
    from portfolio.carvision.features import SMALL_ROWS, group_keys

    rng = np.random.default_rng(0)
    n = 50
    cols = {
        "model": np.array(
            rng.choice(np.array(["ford f-150", "bmw x5", None, np.nan], dtype=object), n), dtype=object
        ),
        "odometer": np.where(rng.random(n) < 0.2, np.nan, rng.integers(0, 300_000, n).astype(float)),
        "model_year": rng.integers(1990, 2019, n).astype(float),
    }
    names = ("model", "model_year", "odometer")
    large = group_keys(cols, names)
    small = np.concatenate(
        [
            group_keys({c: v[i : i + SMALL_ROWS] for c, v in cols.items()}, names)
            for i in range(0, n, SMALL_ROWS)
        ]
    )
    assert large.dtype == small.dtype == np.uint64
    assert np.array_equal(large, small)
    assert len(np.unique(large)) > 10  # the keys do tell rows apart


def test_price_stats_small_requests_match_the_batch_path() -> None:
    """Up to SMALL_ROWS rows are looked up in plain Python: same statistics as the numpy path,
    for listings with and without a match (unseen model, missing values)."""
    from portfolio.carvision.features import SMALL_ROWS

    X, y = typed(raw_frame(200))
    feats = VehicleFeatures().fit(X).transform(X)
    ps = PriceStats().fit(feats, y)
    query = pd.concat([feats.head(20), feats.head(3).assign(model="tesla model s", odometer=np.nan)])
    query = query.reset_index(drop=True)
    cols = {c: query[c].to_numpy() for c in query.columns}
    large = ps.transform_columns(cols)
    for start in range(0, len(query), SMALL_ROWS):
        small = ps.transform_columns({c: v[start : start + SMALL_ROWS] for c, v in cols.items()})
        for name in ps.output_names():
            assert np.array_equal(small[name], large[name][start : start + SMALL_ROWS], equal_nan=True), name
    assert (large["same_listing_n"][:20] >= 1).all()  # every training listing finds itself
    assert np.isnan(large["model_logprice"][-3:]).all() and (large["model_n"][-3:] == 0).all()


def test_key_plan_shares_prefixes_and_gives_each_groups_own_keys() -> None:
    """The price groups' keys computed together (shared leading columns computed once) equal
    each group's keys computed alone, for requests and batches, with missing values."""
    from portfolio.carvision.features import PRICE_GROUPS, SMALL_ROWS, KeyPlan, group_keys

    X, _ = typed(raw_frame(60))
    cols = VehicleFeatures().fit(X).transform_columns(frame_to_columns(X, SPEC.fields))
    groups = [names for _, names in PRICE_GROUPS]
    plan = KeyPlan(groups)
    assert len(plan.nodes) < sum(map(len, groups)) / 3  # the relaxed listing keys share a prefix
    for rows in (slice(0, 60), slice(0, SMALL_ROWS), slice(5, 6)):
        part = {c: v[rows] for c, v in cols.items()}
        together = plan.keys(part)
        for names, keys in zip(groups, together, strict=True):
            assert np.array_equal(keys, group_keys(part, names)), names
    assert len(np.unique(plan.keys(cols)[0])) > 20  # the listing keys do tell rows apart


def test_group_keys_do_not_change_between_versions() -> None:
    """A trained model's price tables hold these keys: a change to the hashing would make every
    registered model silently miss its re-posts. Values computed by the code that trained them."""
    cols = {
        "model": np.array(["ford f-150", None, "bmw x5"], dtype=object),
        "model_year": np.array([2011.0, np.nan, 2019.0]),
        "odometer": np.array([145000.0, 0.0, np.nan]),
    }
    request = group_keys(cols, ("model", "model_year", "odometer"))
    assert request.tolist() == [4072108106110682053, 10797130126772452424, 2009402110572790305]
    batch = group_keys({c: np.concatenate([v] * 4) for c, v in cols.items()}, ("model_year", "model"))
    assert batch[:3].tolist() == [6982553326573805264, 17598757240609794271, 872801291205717468]
