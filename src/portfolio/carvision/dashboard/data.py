"""What the CarVision dashboard shows, as plain functions (no Streamlit here, so they are easy to
test and to cache): the listings after the core's validation and the service's cleaning rules, the
derived features from the model's own transformer, the champion's MLflow run (metrics with
intervals, candidates, feature importance), hold-out predictions, comparable listings, and a
prediction through the API or the local champion."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from portfolio.carvision.cleaning import PIPELINE_RULES, rule_descriptions
from portfolio.carvision.features import VehicleFeatures
from portfolio.carvision.spec import SPEC
from portfolio.core.data import load_training_data, raw_path
from portfolio.core.settings import Settings

# Metrics shown for the champion, in this order (names as the core logs them: cv_/test_ prefix).
METRICS = ("rmse", "mae", "r2", "coverage", "interval_width")
METRIC_LABELS = {
    "rmse": "RMSE ($)",
    "mae": "MAE ($)",
    "r2": "R²",
    "coverage": "80% interval coverage",
    "interval_width": "median interval width ($)",
}


@dataclass
class Market:
    """Listings used for training (validated and cleaned) with derived features, plus quality facts."""

    listings: pd.DataFrame
    quality: pd.DataFrame  # per column: missing values in the raw file
    exclusions: pd.DataFrame  # rule, rows excluded, description
    rows_in_file: int
    file: str


def data_file(settings: Settings) -> Path:
    return raw_path(SPEC, settings)


def load_market(path: Path, settings: Settings) -> Market:
    """Validate + clean with the core and the spec's rules; add the model's derived features."""
    ds = load_training_data(SPEC, settings, path)
    report = ds.report()
    listings = ds.X.copy()
    derived = VehicleFeatures().fit(ds.X).transform(ds.X)
    listings["price"] = ds.y.to_numpy()
    for col in ("vehicle_age", "miles_per_year", "make", "condition_score"):
        listings[col] = derived[col].to_numpy()
    listings["model"] = derived["model"].to_numpy()

    typed = ds.validation.frame
    quality = pd.DataFrame(
        {
            "column": [f.name for f in SPEC.fields],
            "missing": [int(typed[f.name].isna().sum()) for f in SPEC.fields],
        }
    )
    quality["missing %"] = (100.0 * quality["missing"] / max(len(typed), 1)).round(2)
    quality["handling"] = quality["column"].map(dict(PIPELINE_RULES)).fillna("required")

    rows: list[dict[str, Any]] = []
    schema = report["schema"]
    rows.append(
        {
            "rule": "schema validation",
            "rows excluded": int(schema["invalid_rows"]),
            "description": "; ".join(f"{k} ({v})" for k, v in list(schema["by_reason"].items())[:5])
            or "type, range or category errors",
        }
    )
    rows.append(
        {
            "rule": "unusable price",
            "rows excluded": int(report["target_invalid_rows"]),
            "description": "price missing or not a number",
        }
    )
    descriptions = rule_descriptions()
    for rule, n in ((report.get("cleaning") or {}).get("excluded_by_rule") or {}).items():
        rows.append({"rule": rule, "rows excluded": int(n), "description": descriptions.get(rule, "")})
    return Market(
        listings=listings,
        quality=quality,
        exclusions=pd.DataFrame(rows),
        rows_in_file=int(report["rows_in_file"]),
        file=str(report["file"]),
    )


def filter_listings(
    df: pd.DataFrame,
    makes: list[str] | None = None,
    types: list[str] | None = None,
    conditions: list[str] | None = None,
    years: tuple[int, int] | None = None,
    prices: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """The Market Analysis filters; an empty selection means "all". Listings with an unknown
    model year are kept unless the year range is narrowed."""
    mask = pd.Series(True, index=df.index)
    if makes:
        mask &= df["make"].isin(makes)
    if types:
        mask &= df["type"].isin(types)
    if conditions:
        mask &= df["condition"].isin(conditions)
    if years is not None:
        lo, hi = years
        full = (lo, hi) == (int(df["model_year"].min()), int(df["model_year"].max()))
        in_range = df["model_year"].between(lo, hi)
        mask &= in_range | (df["model_year"].isna() & full)
    if prices is not None:
        mask &= df["price"].between(*prices)
    return df.loc[mask]


# ------------------------------------------------------------------------------- the champion
@dataclass
class Champion:
    version: str
    run_id: str
    model_name: str
    metrics: dict[str, float]
    params: dict[str, str]
    candidates: pd.DataFrame  # one row per candidate (nested runs): cv metrics
    importance: dict[str, float] = field(default_factory=dict)
    data_report: dict[str, Any] = field(default_factory=dict)

    def stat(self, prefix: str, metric: str) -> tuple[float, float, float] | None:
        key = f"{prefix}_{metric}"
        if key not in self.metrics:
            return None
        m = self.metrics
        return m[key], m.get(f"{key}_ci_low", np.nan), m.get(f"{key}_ci_high", np.nan)

    @property
    def refit(self) -> bool:
        """Was the registered model refit on all rows after its evaluation (``refit_full``)?"""
        return self.params.get("refit_full") == "True"


def champion_info(settings: Settings) -> Champion | None:
    """The champion's run in MLflow (None when nothing is registered yet)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from portfolio.core import registry

    registry.configure(settings)
    mv = registry.champion_version(SPEC.name)
    if mv is None or not mv.run_id:
        return None
    client = MlflowClient()
    run = client.get_run(mv.run_id)
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    cand_rows = []
    for child in children:
        row: dict[str, Any] = {"candidate": child.info.run_name}
        for metric in METRICS:
            for suffix in ("", "_ci_low", "_ci_high"):
                key = f"cv_{metric}{suffix}"
                if key in child.data.metrics:
                    row[key] = child.data.metrics[key]
        cand_rows.append(row)
    candidates = pd.DataFrame(cand_rows)
    if not candidates.empty and "cv_rmse" in candidates:
        candidates = candidates.sort_values("cv_rmse").reset_index(drop=True)

    def artifact(name: str) -> dict[str, Any]:
        try:
            data = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{name}")
            return dict(data) if isinstance(data, dict) else {}
        except Exception:
            return {}

    return Champion(
        version=str(mv.version),
        run_id=run.info.run_id,
        model_name=str(run.data.params.get("model", "")),
        metrics=dict(run.data.metrics),
        params=dict(run.data.params),
        candidates=candidates,
        importance={k: float(v) for k, v in artifact("feature_importance.json").items()},
        data_report=artifact("data_report.json"),
    )


def holdout_predictions(settings: Settings, predictor: Any, path: Path) -> pd.DataFrame:
    """The champion's predictions on the core's hold-out split (same seed → the same rows the
    training run evaluated on): actual, predicted, interval and residual."""
    from portfolio.core.training.train import split

    ds = load_training_data(SPEC, settings, path)
    _, X_test, _, y_test = split(SPEC, ds, settings)
    pred = predictor.predict_frame(X_test)
    return _holdout_frame(
        y_test.to_numpy(),
        pred["price"].to_numpy(),
        pred["price_low"].to_numpy(),
        pred["price_high"].to_numpy(),
    )


def logged_holdout_predictions(settings: Settings, run_id: str) -> pd.DataFrame:
    """For a champion refit on all rows: the hold-out predictions of its training-split fit, as
    the training run logged them (the champion itself has seen these rows)."""
    import mlflow

    from portfolio.core import registry
    from portfolio.core.training.train import HOLDOUT_PREDICTIONS_ARTIFACT

    registry.configure(settings)
    data = mlflow.artifacts.load_dict(f"runs:/{run_id}/{HOLDOUT_PREDICTIONS_ARTIFACT}")
    return _holdout_frame(*(np.asarray(data[k], dtype=float) for k in ("actual", "pred", "low", "high")))


def _holdout_frame(
    actual: np.ndarray, predicted: np.ndarray, low: np.ndarray, high: np.ndarray
) -> pd.DataFrame:
    out = pd.DataFrame({"actual": actual, "predicted": predicted, "low": low, "high": high})
    out["residual"] = out["actual"] - out["predicted"]
    out["covered"] = (out["actual"] >= out["low"]) & (out["actual"] <= out["high"])
    return out


def coverage_by_band(holdout: pd.DataFrame, bands: int = 5) -> pd.DataFrame:
    """Interval coverage per predicted-price quintile (is the interval honest across the range?)."""
    q = pd.qcut(holdout["predicted"], bands, duplicates="drop")
    grouped = holdout.groupby(q, observed=True)
    return pd.DataFrame(
        {
            "predicted price band": [f"${iv.left:,.0f}-${iv.right:,.0f}" for iv in grouped.groups],  # type: ignore[attr-defined]
            "coverage": grouped["covered"].mean().to_numpy(),
            "rows": grouped.size().to_numpy(),
        }
    )


# ----------------------------------------------------------------------------- predictions
class PredictionError(RuntimeError):
    """The API refused the record or could not be reached: the message says why."""


def predict_via_api(url: str, record: dict[str, Any], api_key: str | None = None) -> dict[str, Any]:
    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        r = httpx.post(f"{url.rstrip('/')}/predict", json=record, headers=headers, timeout=15.0)
    except httpx.HTTPError as exc:
        raise PredictionError(f"CarVision API at {url} is unreachable: {exc}") from None
    if r.status_code != 200:
        try:
            detail = r.json().get("detail")
        except (ValueError, json.JSONDecodeError):
            detail = r.text[:300]
        if isinstance(detail, list):
            detail = "; ".join(f"{d.get('field')}: {d.get('reason')}" for d in detail if isinstance(d, dict))
        raise PredictionError(f"CarVision API answered HTTP {r.status_code}: {detail}")
    return dict(r.json())


def predict_local(predictor: Any, record: dict[str, Any]) -> dict[str, Any]:
    from portfolio.core.schema import request_model

    Record = request_model("CarvisionRecord", SPEC.fields)
    try:
        checked = Record.model_validate(record).model_dump()
    except Exception as exc:
        raise PredictionError(str(exc)) from None
    out = predictor.predict_records([checked])[0]
    out["model_version"] = predictor.version
    return dict(out)


def first_api_key(settings: Settings) -> str | None:
    keys = [k.strip() for k in (getattr(settings, "api_keys", "") or "").split(",") if k.strip()]
    return keys[0] if keys else None


def comparables(listings: pd.DataFrame, record: dict[str, Any], n: int = 10) -> pd.DataFrame:
    """Listings most like ``record``: the same model (else the same make and type), model year
    within ±2, ranked by year and odometer distance."""
    model = " ".join(str(record.get("model", "")).lower().split())
    pool = listings[listings["model"] == model]
    if len(pool) < 3:
        make = model.split(" ", 1)[0]
        pool = listings[(listings["make"] == make) & (listings["type"] == record.get("type"))]
    year = record.get("model_year")
    if year is not None and len(pool):
        near = pool[(pool["model_year"] - float(year)).abs() <= 2]
        pool = near if len(near) >= 3 else pool
    if pool.empty:
        return pool
    dist = pd.Series(0.0, index=pool.index)
    if year is not None:
        dist += (pool["model_year"] - float(year)).abs().fillna(5.0)
    odo = record.get("odometer")
    if odo is not None:
        dist += ((pool["odometer"] - float(odo)).abs() / 20_000.0).fillna(3.0)
    if record.get("condition"):
        dist += (pool["condition"] != record["condition"]).astype(float) * 0.5
    cols = ["price", "model_year", "model", "condition", "odometer", "type", "paint_color", "date_posted"]
    out = pool.assign(_d=dist).sort_values(["_d", "price"]).head(n)[cols].reset_index(drop=True)
    out["date_posted"] = out["date_posted"].dt.strftime("%Y-%m-%d")
    return out
