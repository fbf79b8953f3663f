"""TelecomAI unit tests on synthetic frames: parsing, features, tiers, the pipeline, attributions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from imblearn.pipeline import Pipeline
from sklearn.ensemble import VotingClassifier
from sklearn.model_selection import FixedThresholdClassifier

from portfolio.core.explain.substitution import (
    ReferenceProfile,
    find_step,
    logit,
    reference_contributions,
    top_factors,
)
from portfolio.core.fastpath.columns import frame_to_columns
from portfolio.core.registry import LoadedModel
from portfolio.core.schema import request_model, validate_frame
from portfolio.core.serving.inference import Predictor
from portfolio.telecom.spec import (
    SPEC,
    TelcoFeatures,
    customer_intelligence,
    risk_tiers,
    soft_voting_pipeline,
)
from tests.telecom.synthetic import raw_frame, typed_frame

SMALL = {"xgb_n_estimators": 20, "rf_n_estimators": 20, "n_jobs": 1}


def test_target_encoding_maps_yes_no_and_flags_anything_else() -> None:
    y = SPEC.encode_target(pd.Series(["Yes", "No", " Yes ", "maybe", None, ""]))
    assert y.iloc[:3].tolist() == [1.0, 0.0, 1.0]
    assert y.iloc[3:].isna().all()


def test_customer_id_is_never_a_feature() -> None:
    assert "customerID" in SPEC.ignored_columns
    assert "customerID" not in SPEC.feature_names
    assert SPEC.target not in SPEC.feature_names


def test_blank_total_charges_parse_as_missing_not_as_errors() -> None:
    raw = raw_frame(50)
    assert (raw["TotalCharges"].str.strip() == "").sum() == 5
    result = validate_frame(raw, SPEC.fields)
    assert result.n_invalid == 0
    new = raw["tenure"] == "0"
    assert result.frame.loc[new, "TotalCharges"].isna().all()
    assert result.frame.loc[~new, "TotalCharges"].notna().all()


def test_bad_values_are_row_errors_naming_the_field() -> None:
    raw = raw_frame(6)
    raw.loc[1, "Contract"] = "Weekly"
    raw.loc[2, "TotalCharges"] = "lots"
    raw.loc[3, "tenure"] = "-4"
    raw.loc[4, "PaymentMethod"] = "Bitcoin"
    errors = validate_frame(raw, SPEC.fields).errors
    assert errors[0] == "" and errors[5] == ""
    assert "Contract" in errors[1] and "Month-to-month" in errors[1]
    assert errors[2].startswith("TotalCharges: not a number")
    assert "tenure" in errors[3]
    assert "PaymentMethod" in errors[4]


def test_request_model_rejects_unknown_category_and_accepts_null_total_charges() -> None:
    from pydantic import ValidationError

    Record = request_model("TelecomRecord", SPEC.fields)
    example = {f.name: f.example for f in SPEC.fields}
    assert Record(**(example | {"TotalCharges": None, "tenure": 0}))
    with pytest.raises(ValidationError) as exc:
        Record(**(example | {"InternetService": "Satellite"}))
    assert exc.value.errors()[0]["loc"] == ("InternetService",)


def test_features_impute_total_charges_and_derive_columns() -> None:
    X = pd.DataFrame(
        {
            "tenure": [0.0, 3.0, 10.0],
            "MonthlyCharges": [50.0, 20.0, 80.0],
            "TotalCharges": [np.nan, np.nan, 600.0],
            **{c: ["No", "Yes", "Yes"] for c in ("PhoneService", "OnlineSecurity")},
            **{
                c: ["No", "No internet service", "Yes"]
                for c in (
                    "MultipleLines",
                    "OnlineBackup",
                    "DeviceProtection",
                    "TechSupport",
                    "StreamingTV",
                    "StreamingMovies",
                )
            },
        }
    )
    out = TelcoFeatures().fit_transform(X)
    assert out["TotalCharges"].tolist() == [0.0, 60.0, 600.0]  # tenure x monthly when missing
    assert out["n_services"].tolist() == [0.0, 2.0, 8.0]
    assert out["log_tenure"].tolist() == pytest.approx(np.log1p([0, 3, 10]))
    assert X["TotalCharges"].isna().sum() == 2  # the input frame is not modified
    # The columnar twin (compiled fast path) computes the same columns.
    cols = TelcoFeatures().transform_columns({c: X[c].to_numpy() for c in X.columns})
    for c in ("TotalCharges", "n_services", "log_tenure"):
        np.testing.assert_array_equal(cols[c], out[c].to_numpy(dtype=float))


def test_declared_derived_columns_are_what_the_features_read() -> None:
    """``TelcoFeatures.derived_from`` (the compiled explanations trust it): every other column
    passes through as the same array; changing a field changes only the columns declared to
    read it; the declared inputs alone are enough to compute the derived columns."""
    X, _ = typed_frame(300)
    cols = frame_to_columns(X, SPEC.fields)
    step = TelcoFeatures()
    out = step.transform_columns(cols)
    declared = TelcoFeatures.derived_from
    assert set(out) == set(cols) | set(declared)
    for c in cols:
        if c not in declared:
            assert out[c] is cols[c], c
    rng = np.random.default_rng(0)
    for field in cols:
        other = dict(cols)
        other[field] = cols[field][rng.permutation(len(X))]  # the field's values, shuffled
        other[field][::7] = None if cols[field].dtype == object else np.nan
        changed = step.transform_columns(other)
        moved = {c for c in out if not np.array_equal(changed[c], out[c], equal_nan=out[c].dtype != object)}
        allowed = {c for c, reads in declared.items() if field in reads} | ({field} - set(declared))
        assert moved <= allowed, (field, moved - allowed)
        assert {c for c, reads in declared.items() if field in reads} <= moved | {"TotalCharges"}, field
    inputs = set().union(*declared.values())
    alone = step.transform_columns({c: cols[c] for c in inputs})
    for c in declared:
        np.testing.assert_array_equal(alone[c], out[c])


def test_pipeline_is_a_soft_vote_of_three_learners_with_resampling_inside() -> None:
    pipe = soft_voting_pipeline({})
    assert isinstance(pipe, Pipeline)
    names = [n for n, _ in pipe.steps]
    assert names.index("resample") < names.index("vote")
    vote = pipe.named_steps["vote"]
    assert isinstance(vote, VotingClassifier) and vote.voting == "soft"
    assert len({type(est).__name__ for _, est in vote.estimators}) >= 3


def test_unknown_hyper_parameter_is_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="xgb_depth"):
        soft_voting_pipeline({"xgb_depth": 3})


def test_fitted_pipeline_scores_rows_with_missing_total_charges() -> None:
    X, y = typed_frame(400)
    pipe = soft_voting_pipeline(SMALL).fit(X, y)
    new = X[X["TotalCharges"].isna()]
    assert len(new) == 5
    p = pipe.predict_proba(new)[:, 1]
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    # The reference customer was recorded from the raw training rows (not the resampled ones).
    ref = pipe.named_steps["reference"].reference_
    assert ref["tenure"] == X["tenure"].median()
    assert ref["Contract"] == X["Contract"].mode().iloc[0]
    assert "customerID" not in pipe.named_steps["reference"].feature_names_in_


def test_risk_tiers_cut_at_threshold_and_midpoint() -> None:
    t = 0.4  # high from (1 + 0.4) / 2 = 0.7
    tiers = risk_tiers(np.array([0.0, 0.3999, 0.4, 0.6999, 0.7, 1.0]), t)
    assert tiers.tolist() == ["low", "low", "medium", "medium", "high", "high"]


def _additive_model(X: pd.DataFrame) -> np.ndarray:
    """logit = 2*x + 1*[color == red] - 1: no interactions, so attributions are exact."""
    z = 2.0 * X["x"].to_numpy(dtype=float) + 1.0 * (X["color"] == "red").to_numpy() - 1.0
    return np.asarray(1 / (1 + np.exp(-z)))


def test_reference_contributions_are_exact_for_an_additive_model() -> None:
    X = pd.DataFrame({"x": [0.0, 1.0, 2.0, 0.5, -1.0], "color": ["red", "blue", "red", "red", "blue"]})
    ref = ReferenceProfile().fit(X).reference_
    assert ref == {"x": 0.5, "color": "red"}
    contrib = reference_contributions(_additive_model, X, ref, block_rows=2)
    assert contrib.index.equals(X.index)
    assert contrib["x"].to_numpy() == pytest.approx(2.0 * (X["x"].to_numpy() - 0.5), abs=1e-6)
    assert contrib["color"].to_numpy() == pytest.approx([0, -1, 0, 0, -1], abs=1e-6)
    # Additive model: the contributions add up to the row's log-odds minus the reference's.
    base = logit(_additive_model(X))
    ref_logit = logit(_additive_model(pd.DataFrame([ref])))
    assert contrib.sum(axis=1).to_numpy() == pytest.approx(base - ref_logit, abs=1e-5)


def test_top_factors_order_by_absolute_contribution_and_skip_reference_values() -> None:
    X = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"], "c": [np.nan, 3.5], "d": [0.0, 0.0]})
    contrib = pd.DataFrame({"a": [0.2, -0.9], "b": [-0.5, 0.1], "c": [1.25, 0.0], "d": [0.0, 0.3]})
    texts = top_factors(contrib, X, k=3)
    assert texts[0] == "c=missing (+1.25); b=x (-0.50); a=1 (+0.20)"
    assert texts[1] == "a=2 (-0.90); d=0 (+0.30); b=y (+0.10)"
    # A row equal to the reference everywhere has no factors at all.
    assert top_factors(pd.DataFrame({"a": [0.0]}), pd.DataFrame({"a": [1.0]})) == [""]


def test_customer_intelligence_outputs_for_a_wrapped_pipeline() -> None:
    X, y = typed_frame(400)
    model = FixedThresholdClassifier(
        soft_voting_pipeline(SMALL), threshold=0.5, response_method="predict_proba"
    ).fit(X, y)
    assert isinstance(find_step(model, ReferenceProfile), ReferenceProfile)
    predictor = Predictor(SPEC, LoadedModel("telecom", "1", model, "sha", None))
    assert predictor.compiled, predictor.inference
    rows = X.iloc[[3, 0, 200]]  # non-contiguous index: outputs follow row order
    proba = model.predict_proba(rows)[:, 1]
    # The compiled fast path (used for serving and for the attributions) equals the pipeline
    # (within 1e-6: small requests sum XGBoost's float32 leaves in float64).
    np.testing.assert_allclose(predictor.scores_frame(rows), proba, atol=1e-6, rtol=0)
    out = customer_intelligence(frame_to_columns(rows, SPEC.fields), proba, predictor)
    assert out["at_risk"].tolist() == (proba >= 0.5).tolist()
    assert out["risk_tier"].tolist() == risk_tiers(proba, 0.5).tolist()
    assert len(out["top_factors"]) == 3
    for text in out["top_factors"]:
        parts = text.split("; ")
        assert 1 <= len(parts) <= 3
        assert all(p.split("=")[0] in SPEC.feature_names for p in parts)
        sizes = [abs(float(p.rsplit("(", 1)[1].rstrip(")"))) for p in parts]
        assert sizes == sorted(sizes, reverse=True)
    # Month-to-month contracts drive churn in the synthetic data: whatever the reference contract,
    # Contract must push month-to-month customers' scores up relative to two-year customers'.
    ref = find_step(model, ReferenceProfile).reference_
    contrib = reference_contributions(lambda f: model.predict_proba(f)[:, 1], X, ref)
    # The served factors (columnar, compiled) are the pipeline's factors on DataFrames.
    assert out["top_factors"] == top_factors(contrib.loc[rows.index], rows, k=3)
    by_contract = contrib["Contract"].groupby(X["Contract"]).mean()
    assert by_contract["Month-to-month"] > by_contract["Two year"] + 0.2


def test_batch_attributions_take_the_compiled_shortcut_and_equal_the_pipelines() -> None:
    """A batch (more rows than a request) is explained through the compiled substitutions
    (rows already at the reference keep their score, only changed columns are re-encoded): the
    same probabilities and contributions as scoring every substituted row with the fitted
    pipeline, hence the same top_factors."""
    X, y = typed_frame(400)
    model = FixedThresholdClassifier(
        soft_voting_pipeline(SMALL), threshold=0.5, response_method="predict_proba"
    ).fit(X, y)
    predictor = Predictor(SPEC, LoadedModel("telecom", "1", model, "sha", None))
    assert predictor.compiled, predictor.inference
    rows = X.iloc[:150]
    cols = frame_to_columns(rows, SPEC.fields)
    ref = find_step(model, ReferenceProfile).reference_
    calls: list[int] = []
    fast = predictor._fast
    assert fast is not None
    original = fast.substitutions

    def recording(c: dict[str, np.ndarray], s: dict[str, object]) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(next(iter(c.values()))))
        return original(c, s)

    fast.substitutions = recording  # type: ignore[method-assign]
    out = customer_intelligence(cols, None, predictor)
    assert calls == [150]
    assert fast.derived_from is not None  # the declared shortcut (core/fastpath/) was taken
    contrib = reference_contributions(lambda f: model.predict_proba(f)[:, 1], rows, ref)
    np.testing.assert_allclose(out["probability"], model.predict_proba(rows)[:, 1], atol=1e-6, rtol=0)
    names = list(SPEC.feature_names)
    proba, substituted = predictor.substitution_scores(cols, {c: ref[c] for c in names})
    np.testing.assert_allclose(logit(proba)[:, None] - logit(substituted), contrib.to_numpy(), atol=1e-5)
    assert out["top_factors"] == top_factors(contrib, rows, k=3)
