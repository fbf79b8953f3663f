"""The compiled inference path: exact parity with scikit-learn, and an honest fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from portfolio.bankchurn.spec import SPEC as BANKCHURN
from portfolio.core.fastpath.columns import (
    NotCompilable,
    OneRecord,
    equal_to,
    filled_like,
    frame_to_columns,
    same_values,
    to_columns,
)
from portfolio.core.fastpath.encoders import compile_column_transformer
from portfolio.core.fastpath.pipeline import compile_pipeline
from portfolio.core.features import tabular_preprocessor
from portfolio.core.registry import LoadedModel
from portfolio.core.schema import validate_frame
from portfolio.core.serving.inference import Predictor
from portfolio.core.settings import Settings
from tests.support import synthetic
from tests.support.parity import assert_fast_path_parity


def _typed(n: int, seed: int) -> pd.DataFrame:
    frame = synthetic.make_frame(n, seed)
    return validate_frame(frame, synthetic.FIELDS).frame


@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("rows", [50, 200])  # a request's per-value path; a batch's fused one
def test_column_transformer_matches_scikit_learn(scale: bool, rows: int) -> None:
    train = _typed(300, 1)
    ct = tabular_preprocessor(["x1", "x2", "noise"], ["color"], scale=scale).fit(train)
    test = _typed(rows, 2)
    test.loc[0, "color"] = "violet"  # unseen category → all zeros, like handle_unknown="ignore"
    test.loc[1, "color"] = None  # missing category → imputed constant
    test.loc[rows - 1, "color"] = "violet"
    fast = compile_column_transformer(ct)(
        to_columns(test.to_dict("records"), synthetic.FIELDS)  # type: ignore[arg-type]
    )
    np.testing.assert_allclose(fast, ct.transform(test), atol=1e-12)
    # A frame's missing text may be NaN instead of None.
    cols = frame_to_columns(test, synthetic.FIELDS)
    cols["color"] = cols["color"].copy()
    cols["color"][1] = np.nan
    np.testing.assert_allclose(compile_column_transformer(ct)(cols), ct.transform(test), atol=1e-12)


@pytest.mark.parametrize("scale", [False, True])
def test_one_row_requests_encode_like_the_batch_and_remember_a_bounded_number_of_values(
    monkeypatch: pytest.MonkeyPatch, scale: bool
) -> None:
    """A request's row is encoded in Python floats (encoders.py ``one_row``): its numbers through
    the imputer and scaler's Python form, its text values through their remembered encodings.
    Rows one at a time, with missing numbers, repeats, unseen and missing categories, equal the
    batch's encoding bit for bit; unseen values fill a column's memory up to its bound."""
    import portfolio.core.fastpath.encoders as encoders

    monkeypatch.setattr(encoders, "_MEMO_VALUES", 6)
    train = _typed(300, 1)
    train.loc[0:9, "x2"] = np.nan  # the imputer has a missing-value indicator to learn
    ct = tabular_preprocessor(["x1", "x2", "noise"], ["color"], scale=scale).fit(train)
    test = _typed(120, 2)
    test.loc[0:3, "color"] = ["violet", None, "violet", "ultraviolet"]
    test.loc[4:19, "color"] = [f"unseen-{i}" for i in range(16)]
    test.loc[[2, 30, 31], "x1"] = np.nan
    test.loc[[3, 31, 77], "x2"] = np.nan
    fast = compile_column_transformer(ct)
    assert fast._one_row_in_python  # the path under test, not numpy's
    records = test.to_dict("records")
    one_by_one = np.concatenate(
        [fast(to_columns([r], synthetic.FIELDS)) for r in records]  # type: ignore[list-item]
    )
    np.testing.assert_array_equal(one_by_one, fast(to_columns(records, synthetic.FIELDS)))  # type: ignore[arg-type]
    np.testing.assert_allclose(one_by_one, ct.transform(test), atol=1e-12)
    text_blocks = [b for b in fast.blocks if b.categorical]
    assert text_blocks and all(len(m) == 6 for b in text_blocks for m in b._memo)


def test_one_record_is_its_columns_and_the_encoder_reads_its_values() -> None:
    """``OneRecord`` (the API's one-record columns) is a mapping equal to ``to_columns``' for the
    same values, and the encoder encodes it from its values: once a text value is remembered,
    without building any column."""
    train = _typed(300, 1)
    train.loc[0:9, "x2"] = np.nan
    ct = tabular_preprocessor(["x1", "x2", "noise"], ["color"], scale=True).fit(train)
    fast = compile_column_transformer(ct)
    test = _typed(60, 2)
    test.loc[[1, 5], "x1"] = np.nan
    test.loc[[2, 5], "color"] = None
    test.loc[3, "color"] = "violet"  # unseen
    records = test.to_dict("records")
    batch = fast(to_columns(records, synthetic.FIELDS))  # type: ignore[arg-type]
    for i, record in enumerate(records * 2):  # the second time, every text value is remembered
        values = {f.name: (record.get(f.name),) for f in synthetic.FIELDS}
        cols = to_columns(None, synthetic.FIELDS, values)
        one = OneRecord(values, synthetic.FIELDS)
        encoded = fast(one)
        assert i < len(records) or one._built == {}  # read from the values, no column built
        np.testing.assert_array_equal(encoded, batch[i % len(records) : i % len(records) + 1])
        np.testing.assert_array_equal(encoded, fast(cols))
        assert list(one) == list(cols) and len(one) == len(cols)
        for name, column in cols.items():
            assert one[name].dtype == column.dtype
            np.testing.assert_array_equal(one[name], column)
    with pytest.raises(KeyError):
        one["not a field"]


def test_records_become_the_same_columns_with_or_without_every_field() -> None:
    """A request may leave an optional field out of its record: with or without every field,
    records give the frame's own columns, missing numbers as NaN."""
    test = _typed(30, 5)
    test.loc[2, "x2"] = None
    test.loc[3, "color"] = None
    records = test.to_dict("records")
    expected = frame_to_columns(test, synthetic.FIELDS)
    partial = [{k: v for k, v in r.items() if not (k == "x2" and i % 2)} for i, r in enumerate(records)]
    for rows in (records, partial):
        cols = to_columns(rows, synthetic.FIELDS)  # type: ignore[arg-type]
        assert np.array_equal(cols["x1"], expected["x1"])
        x2 = expected["x2"].copy()
        if rows is partial:
            x2[1::2] = np.nan
        assert np.array_equal(cols["x2"], x2, equal_nan=True)
        assert [None if v is None or v != v else v for v in cols["color"]] == [
            None if v is None or v != v else v for v in expected["color"]
        ]
    assert all(len(c) == 0 for c in to_columns([], synthetic.FIELDS).values())


def test_pipeline_probability_matches_scikit_learn() -> None:
    train = _typed(400, 3)
    y = synthetic.make_frame(400, 3)["label"]
    pipe = synthetic.logistic({}).fit(train, y)
    test = _typed(100, 4)
    fast = compile_pipeline(pipe, "classification")(to_columns(test.to_dict("records"), synthetic.FIELDS))  # type: ignore[arg-type]
    np.testing.assert_allclose(fast, pipe.predict_proba(test)[:, 1], atol=1e-12)


class Opaque(TransformerMixin, BaseEstimator):
    """A feature step without a columnar twin: the compiler must refuse it."""

    def fit(self, X: pd.DataFrame, y: object = None) -> Opaque:
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return X


def test_unknown_step_falls_back_to_the_pipeline_and_says_why() -> None:
    train = _typed(300, 5)
    y = synthetic.make_frame(300, 5)["label"]
    pipe = Pipeline(
        [
            ("opaque", Opaque()),
            ("prep", tabular_preprocessor(["x1"], ["color"])),
            ("model", LogisticRegression()),
        ]
    ).fit(train, y)
    with pytest.raises(NotCompilable, match="Opaque"):
        compile_pipeline(pipe, "classification")
    from sklearn.model_selection import FixedThresholdClassifier

    wrapped = FixedThresholdClassifier(pipe, threshold=0.5).fit(train, y)
    predictor = Predictor(synthetic.CLASSIFIER, LoadedModel("synthclf", "1", wrapped, "x", None))
    assert not predictor.compiled and "Opaque" in predictor.inference
    out = predictor.predict_records([{"x1": 0.1, "x2": 1, "color": "red", "noise": 0.0}])
    assert 0 <= out[0]["probability"] <= 1


def test_bankchurn_fast_path_equals_the_registered_mlflow_model(bank_state: Settings, data_dir: Path) -> None:
    assert_fast_path_parity(BANKCHURN, bank_state, data_dir)


def test_weighted_voting_regressor_compiles_member_by_member() -> None:
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import RandomForestRegressor, VotingRegressor
    from xgboost import XGBRegressor

    from portfolio.core.fastpath.trees import compile_regressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values follow each tree's default direction
    y = 50 + 10 * np.nan_to_num(X[:, 0]) ** 2 + rng.normal(size=300)
    vote = VotingRegressor(
        [
            (
                "sqrt",
                TransformedTargetRegressor(
                    XGBRegressor(n_estimators=20), func=np.sqrt, inverse_func=np.square
                ),
            ),
            ("forest", RandomForestRegressor(n_estimators=10, random_state=0)),
        ],
        weights=[0.3, 0.7],
    ).fit(X, y)
    expected = vote.predict(X[:40])
    fast = compile_regressor(vote)
    vote.predict = None  # type: ignore[method-assign]  # the compiled path must not fall back to it
    np.testing.assert_allclose(fast(X[:40]), expected, atol=1e-3)  # XGBoost sums in float32


def test_xgboost_regressor_walk_repeats_the_library_float32_sum_exactly() -> None:
    """A booster fitted on dollars: summing its 400 trees in float64 drifts by cents from the
    library's float32 sum; the compiled walk must give the library's numbers bit for bit."""
    from xgboost import XGBRegressor

    from portfolio.core.fastpath.trees import compile_regressor

    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 5))
    y = 15_000 + 8_000 * X[:, 0] + 3_000 * X[:, 1] ** 2 + rng.normal(scale=2_000, size=2000)
    # A few rows are walked in numpy (trees._NUMPY_WALK_STEPS: one row of depth 6, 2,400 steps,
    # up to 6 rows of depth 3), more by the numba kernel; in float32 too.
    for depth in (6, 3):
        model = XGBRegressor(n_estimators=400, learning_rate=0.05, max_depth=depth, n_jobs=1).fit(X, y)
        fast = compile_regressor(model)
        # One row, a few (trees side by side), many (rows side by side, on every core).
        for rows in (X[:1], X[1:2], X[:5], X[:16], X):
            library = model.get_booster().inplace_predict(rows, validate_features=False)
            np.testing.assert_array_equal(fast(rows), library.astype(np.float64))


def test_compiled_walk_splits_exactly_like_the_libraries_at_their_thresholds() -> None:
    """Rows placed exactly on, just below and just above every split threshold (and missing),
    for scikit-learn (``x <= t``, float64 t) and XGBoost (``x < t``, float32 t): the compiled
    walk must reach the same leaves as the libraries."""
    from sklearn.ensemble import RandomForestClassifier
    from xgboost import XGBClassifier

    from portfolio.core.fastpath.trees import compile_proba

    rng = np.random.default_rng(7)
    X = rng.normal(size=(600, 4)).astype(np.float32).astype(np.float64)
    X[rng.random(X.shape) < 0.1] = np.nan
    y = (np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) ** 2 > 0.8).astype(int)
    forest = RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0).fit(X, y)
    boosted = XGBClassifier(n_estimators=30, max_depth=4, n_jobs=1).fit(X, y)
    thresholds = np.concatenate(
        [e.tree_.threshold[e.tree_.feature >= 0] for e in forest.estimators_]
        + [boosted.get_booster().trees_to_dataframe().query("Feature != 'Leaf'")["Split"].to_numpy()]
    )
    values = np.concatenate(
        [
            thresholds,
            np.float32(thresholds),
            np.nextafter(np.float32(thresholds), np.float32(np.inf)),
            np.nextafter(np.float32(thresholds), np.float32(-np.inf)),
        ]
    ).astype(np.float64)
    values = values[np.isfinite(values)]  # scikit-learn's "missing goes right" splits sit at +inf
    probe = np.tile(rng.choice(values, size=(len(values), 1)), (1, 4))
    probe[:, 1:] = rng.permuted(probe[:, 1:], axis=0)
    probe[rng.random(probe.shape) < 0.1] = np.nan
    # XGBoost answers in float32 (a wrong leaf moves a probability by far more than 1e-6).
    for model, atol in ((forest, 1e-12), (boosted, 1e-6)):
        fast = compile_proba(model)
        expected = model.predict_proba(probe)[:, 1]
        # All rows in one walk, shared between threads, and one by one.
        assert len(probe) >= 1_000
        np.testing.assert_allclose(fast(probe), expected, rtol=0, atol=atol)
        one_by_one = np.concatenate([fast(probe[i : i + 1]) for i in range(0, 300)])
        np.testing.assert_allclose(one_by_one, expected[:300], rtol=0, atol=atol)
        # A few rows are walked in numpy (one, or 5 at a time: trees._NUMPY_WALK_STEPS), more
        # by the numba kernel: the same leaves, added in the same order, so the same bits.
        np.testing.assert_array_equal(one_by_one, fast(probe)[:300])
        in_fives = np.concatenate([fast(probe[i : i + 5]) for i in range(0, 300, 5)])
        np.testing.assert_array_equal(in_fives, fast(probe)[:300])


def test_kept_walks_score_changed_copies_like_walking_them_afresh() -> None:
    """Explanations score copies of rows with a few columns changed from the rows' kept walks,
    re-walking only the trees whose path read a changed column. On missing values and values
    on either side of every threshold, for forests, boosters and a soft vote of both with a
    linear model, in one thread and in two (>= 512 rows): the rows' own scores are the plain
    walk's, bit for bit, and the copies' scores those of walking the copies afresh."""
    from sklearn.ensemble import RandomForestClassifier, VotingClassifier
    from xgboost import XGBClassifier

    from portfolio.core.fastpath.trees import compile_proba

    rng = np.random.default_rng(11)
    X = rng.normal(size=(1200, 6)).astype(np.float32).astype(np.float64)
    X[rng.random(X.shape) < 0.1] = np.nan
    y = (np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) ** 2 - np.nan_to_num(X[:, 4]) > 0.5).astype(int)
    forest = RandomForestClassifier(n_estimators=25, max_depth=6, random_state=0).fit(X, y)
    boosted = XGBClassifier(n_estimators=40, max_depth=3, n_jobs=1).fit(X, y)
    filled = np.nan_to_num(X)
    vote = VotingClassifier(
        [("lr", LogisticRegression()), ("rf", RandomForestClassifier(10, random_state=1))], voting="soft"
    ).fit(filled, y)
    edges = boosted.get_booster().trees_to_dataframe().query("Feature != 'Leaf'")["Split"].to_numpy()
    for model, rows_in in ((forest, X), (boosted, X), (vote, filled)):
        fast = compile_proba(model)
        for n in (300, 1200):
            rows = rows_in[:n]
            scores, walked = fast.walk(rows)
            assert walked is not None
            np.testing.assert_array_equal(scores, fast(rows))
            base_rows = rng.integers(0, n, size=3 * n)
            copies = rows[base_rows].copy()
            for i in range(len(copies)):  # 0, 1 or 2 columns changed: NaN, a threshold, any value
                for j in rng.choice(6, size=i % 3, replace=False):
                    kind = rng.integers(3)
                    copies[i, j] = np.nan if kind == 0 else rng.choice(edges) if kind == 1 else rng.normal()
            if model is vote:
                copies = np.nan_to_num(copies)
            expected = fast(copies)
            np.testing.assert_allclose(fast.variants(walked, copies, base_rows), expected, rtol=0, atol=1e-12)
            assert np.abs(expected - scores[base_rows]).max() > 0.05  # the changes do move scores


def test_warm_up_does_the_one_off_work_so_requests_do_not() -> None:
    """A server warms its predictor before it says ready: afterwards a request must not read the
    booster back (its base margin, ~0.2 s for CarVision's boosters) nor compile anything."""
    from sklearn.model_selection import FixedThresholdClassifier
    from xgboost import XGBClassifier

    train = _typed(300, 8)
    y = synthetic.make_frame(300, 8)["label"]
    pipe = Pipeline(
        [
            ("prep", tabular_preprocessor(["x1", "x2", "noise"], ["color"])),
            ("model", XGBClassifier(n_estimators=20)),
        ]
    ).fit(train, y)
    wrapped = FixedThresholdClassifier(pipe, threshold=0.5).fit(train, y)
    predictor = Predictor(synthetic.CLASSIFIER, LoadedModel("synthclf", "1", wrapped, "x", None))
    assert predictor.compiled, predictor.inference
    predictor.warm_up()
    booster = wrapped.estimator_.named_steps["model"].get_booster()  # the fitted clone that serves

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the request did one-off work")

    booster.save_raw = forbidden  # type: ignore[method-assign]
    booster.inplace_predict = forbidden  # type: ignore[method-assign]
    out = predictor.predict_records([{"x1": 0.3, "x2": 2, "color": "blue", "noise": 0.0}])
    assert 0 <= out[0]["probability"] <= 1


class Doubled(TransformerMixin, BaseEstimator):
    """A derived column that depends on two inputs, as the services' feature steps have."""

    def fit(self, X: pd.DataFrame, y: object = None) -> Doubled:
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        cols = {c: X[c].to_numpy() for c in X.columns}
        return pd.DataFrame(self.transform_columns(cols), index=X.index)

    def transform_columns(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(cols)
        red = np.asarray(cols["color"], dtype=object) == "red"
        out["x1_if_red"] = np.where(red, np.asarray(cols["x1"], dtype=np.float64), 0.0)
        return out


class DeclaredDoubled(Doubled):
    """``Doubled`` saying what its derived column reads (the compiled substitutions then
    recompute only that column, on the rows whose substituted field it reads)."""

    derived_from = {"x1_if_red": ("color", "x1")}


@pytest.mark.parametrize("declared", [False, True], ids=["undeclared", "declared"])
@pytest.mark.parametrize("model", ["logistic", "forest", "boosted"])
def test_substitutions_equal_scoring_every_substituted_row(model: str, declared: bool) -> None:
    """The compiled shortcut (rows already at their substitute keep their score; only changed
    columns are re-encoded, from the declared dependencies when the feature step has them)
    gives the scores of scoring each substituted row in full: missing values in the rows, a
    missing substitute, an unseen category, a derived column."""
    from sklearn.ensemble import RandomForestClassifier

    from portfolio.core.explain.substitution import substitution_scores

    train = _typed(400, 11)
    y = synthetic.make_frame(400, 11)["label"]
    from xgboost import XGBClassifier

    estimator = {
        "logistic": LogisticRegression(),
        "forest": RandomForestClassifier(30, random_state=0),
        "boosted": XGBClassifier(n_estimators=30, max_depth=3, n_jobs=1),
    }[model]
    pipe = Pipeline(
        [
            ("derived", DeclaredDoubled() if declared else Doubled()),
            ("prep", tabular_preprocessor(["x1", "x2", "noise", "x1_if_red"], ["color"], scale=True)),
            ("model", estimator),
        ]
    ).fit(train, y)
    fast = compile_pipeline(pipe, "classification")
    assert (fast.derived_from == {"x1_if_red": {"color", "x1"}}) if declared else fast.derived_from is None
    test = _typed(300, 12)
    test.loc[::9, "color"] = None
    test.loc[5, "color"] = "violet"
    test.loc[::4, "x1"] = 0.25  # a third of the rows already hold x1's substitute
    cols = frame_to_columns(test, synthetic.FIELDS)
    substitutes = {"x1": 0.25, "x2": None, "color": "red", "noise": 0.0}
    scores, substituted = fast.substitutions(cols, substitutes)
    expected_scores, expected = substitution_scores(fast, cols, substitutes)
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-12)
    np.testing.assert_allclose(substituted, expected, rtol=0, atol=1e-12)
    library_atol = 1e-6 if model == "boosted" else 1e-12  # XGBoost answers in float32
    np.testing.assert_allclose(scores, pipe.predict_proba(test)[:, 1], rtol=0, atol=library_atol)
    # The substitutions move the scores, and not where the row already holds the substitute.
    assert np.abs(substituted - scores[:, None]).max() > 0.05
    assert np.array_equal(substituted[::4, 0], scores[::4])
    assert (np.abs(substituted[1::4, 0] - scores[1::4]) > 0).mean() > 0.5


def test_patching_an_encoding_equals_encoding_afresh() -> None:
    """The column transformer's patch re-encodes just the changed values, each distinct value
    once, and gives the encoding of the new rows, missing and unseen values included."""
    train = _typed(300, 13)
    ct = tabular_preprocessor(["x1", "x2", "noise"], ["color"], scale=True).fit(train)
    enc = compile_column_transformer(ct)
    before = frame_to_columns(_typed(120, 14), synthetic.FIELDS)
    after = {c: v.copy() for c, v in before.items()}
    after["x2"][::3] = np.nan
    after["x2"][1::3] = 7.0
    after["color"][::5] = None
    after["color"][2::5] = "violet"
    patched = enc.patch(enc(before), after, before)
    np.testing.assert_allclose(patched, ct.transform(pd.DataFrame(after)), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("values", "value"),
    [
        (np.array([1.0, np.nan, 2.0, -0.0, 0.0]), 2.0),
        (np.array([1.0, np.nan, 2.0, -0.0, 0.0]), 0),
        (np.array([1.0, np.nan, 2.0]), None),
        (np.array([1.0, np.nan, 2.0]), float("nan")),
        (np.array(["Yes", None, "No", "yes", "Yes"], dtype=object), "Yes"),
        (np.array(["Yes", pd.NA, "No"], dtype=object), "No"),
        (np.array(["Yes", None, "No"], dtype=object), None),
        (np.array(["2020-01-01", "2021-03-04"], dtype="datetime64[ns]"), np.datetime64("2020-01-01", "ns")),
    ],
)
def test_equal_to_a_value_is_comparing_with_its_copies(values: np.ndarray, value: object) -> None:
    """The substitutions' shortcut gives what comparing with a filled column gives."""
    expected = same_values(values, filled_like(values, value, len(values)))
    got = equal_to(values, value)
    assert got.dtype == bool and got.shape == values.shape
    np.testing.assert_array_equal(got, expected)
