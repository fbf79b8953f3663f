"""CarVision Market Intelligence dashboard (Streamlit + Plotly).

Run with ``portfolio dashboard --host H --port P``. Four sections: Overview, Market Analysis,
Model Metrics, Price Predictor. Data and model are cached; the predictor calls the CarVision API
when ``CARVISION_API_URL`` is set and the local champion otherwise. All data handling is the
core's (validation) and the service's (cleaning rules, feature transformer), see ``data.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from portfolio.carvision.dashboard import data as D
from portfolio.carvision.spec import COLORS, CONDITIONS, FUELS, SPEC, TRANSMISSIONS, TYPES
from portfolio.core.settings import Settings, get_settings

SECTIONS = ("Overview", "Market Analysis", "Model Metrics", "Price Predictor")
NO_MODEL = "No CarVision model is trained yet: run `portfolio train carvision` (or `make run`), then reload."


# ---------------------------------------------------------------------------------- caching
@st.cache_data(show_spinner="Loading listings…")
def market(path: str, mtime: float, home: str) -> D.Market:
    """Cached per file (path + modification time)."""
    return D.load_market(Path(path), get_settings())


@st.cache_data(ttl=30, show_spinner=False)
def champion(tracking_uri: str) -> D.Champion | None:
    return D.champion_info(get_settings())


@st.cache_resource(show_spinner="Loading the champion model…")
def local_predictor(tracking_uri: str, version: str) -> Any:
    from portfolio.core.serving.inference import load_predictor

    return load_predictor(SPEC, get_settings(), version, warm=True)


@st.cache_data(show_spinner="Scoring the hold-out split…")
def holdout(tracking_uri: str, version: str, path: str, mtime: float) -> pd.DataFrame:
    return D.holdout_predictions(get_settings(), local_predictor(tracking_uri, version), Path(path))


@st.cache_data(show_spinner="Loading the hold-out predictions…")
def logged_holdout(tracking_uri: str, run_id: str) -> pd.DataFrame:
    return D.logged_holdout_predictions(get_settings(), run_id)


def money(x: float) -> str:
    return "-" if x is None or not np.isfinite(x) else f"${x:,.0f}"


# ---------------------------------------------------------------------------------- sections
def overview(m: D.Market | None, data_error: str) -> None:
    st.header("Overview")
    if m is None:
        st.warning(data_error)
        return
    df = m.listings
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Listings (after cleaning)", f"{len(df):,}", help=f"{m.rows_in_file:,} rows in {m.file}")
    c2.metric("Median price", money(float(df["price"].median())))
    c3.metric("Models", f"{df['model'].nunique()}", help=f"{df['make'].nunique()} makes")
    dates = df["date_posted"]
    c4.metric("Posted", f"{dates.min():%b %Y} - {dates.max():%b %Y}")
    st.subheader("Data quality")
    left, right = st.columns(2)
    with left:
        st.caption("Missing values in the raw file, and how the model pipeline handles them")
        st.dataframe(m.quality, hide_index=True, width="stretch", height="content")
    with right:
        st.caption("Rows excluded from training, by rule (rules: `carvision/cleaning.py`)")
        st.dataframe(m.exclusions, hide_index=True, width="stretch")
        kept = len(df)
        st.caption(f"{m.rows_in_file:,} rows in the file → {kept:,} used ({kept / m.rows_in_file:.1%}).")


def market_analysis(m: D.Market | None, data_error: str) -> None:
    st.header("Market Analysis")
    if m is None:
        st.warning(data_error)
        return
    df = m.listings
    ymin, ymax = int(df["model_year"].min()), int(df["model_year"].max())
    pmin, pmax = float(df["price"].min()), float(df["price"].max())
    f1, f2, f3 = st.columns(3)
    makes = f1.multiselect("Make", sorted(df["make"].unique()), key="make")
    types = f2.multiselect("Type", sorted(df["type"].unique()), key="type")
    conditions = f3.multiselect("Condition", list(CONDITIONS), key="condition")
    f4, f5 = st.columns(2)
    years = f4.slider("Model year", ymin, ymax, (max(ymin, 1990), ymax), key="years")
    prices = f5.slider("Price ($)", pmin, pmax, (pmin, pmax), step=500.0, key="prices")
    sel = D.filter_listings(df, makes, types, conditions, years, prices)
    st.caption(f"{len(sel):,} of {len(df):,} listings match the filters")
    if sel.empty:
        st.warning("No listings match these filters.")
        return
    k1, k2, k3 = st.columns(3)
    k1.metric("Median price", money(float(sel["price"].median())))
    k2.metric(
        "Median odometer", f"{sel['odometer'].median():,.0f} mi" if sel["odometer"].notna().any() else "-"
    )
    k3.metric("Median days listed", f"{sel['days_listed'].median():.0f}")
    plot = sel.sample(min(len(sel), 5000), random_state=0)

    a, b = st.columns(2)
    a.plotly_chart(
        px.histogram(sel, x="price", nbins=60, title="Price distribution"), width="stretch", key="price_hist"
    )
    order = sel.groupby("type")["price"].median().sort_values(ascending=False).index.tolist()
    b.plotly_chart(
        px.box(
            sel, x="type", y="price", category_orders={"type": order}, points=False, title="Price by type"
        ),
        width="stretch",
        key="price_type",
    )
    a, b = st.columns(2)
    present = [c for c in CONDITIONS if c in set(sel["condition"])]
    a.plotly_chart(
        px.box(
            sel,
            x="condition",
            y="price",
            category_orders={"condition": present},
            points=False,
            title="Price by condition",
        ),
        width="stretch",
        key="price_condition",
    )
    b.plotly_chart(
        px.scatter(
            plot, x="odometer", y="price", color="condition", opacity=0.4, title="Price vs odometer"
        ).update_traces(marker={"size": 4}),
        width="stretch",
        key="price_odometer",
    )
    a, b = st.columns(2)
    by_age = plot.dropna(subset=["vehicle_age"])
    a.plotly_chart(
        px.scatter(
            by_age,
            x="vehicle_age",
            y="price",
            color="type",
            opacity=0.4,
            title="Price vs age at posting (years)",
        ).update_traces(marker={"size": 4}),
        width="stretch",
        key="price_age",
    )
    weekly = (
        sel.set_index("date_posted")
        .resample("W")["price"]
        .agg(["size", "median"])
        .rename(columns={"size": "listings", "median": "median price"})
        .reset_index()
    )
    b.plotly_chart(
        px.line(
            weekly,
            x="date_posted",
            y="listings",
            title="Listings posted per week",
            hover_data=["median price"],
        ),
        width="stretch",
        key="listings_time",
    )
    st.plotly_chart(
        px.histogram(sel, x="days_listed", color="condition", nbins=50, title="Days listed"),
        width="stretch",
        key="days_listed",
    )


def model_metrics(c: D.Champion | None, path: Path | None, mtime: float, settings: Settings) -> None:
    st.header("Model Metrics")
    if c is None:
        st.info(NO_MODEL)
        return
    refit = (
        f" The served model was then refit on all {c.params.get('final_fit_rows', '?')} rows (hold-out "
        f"included); every figure here is from the same setup fitted on the training split only "
        f"({c.params.get('train_rows', '?')} rows)."
        if c.refit
        else ""
    )
    st.caption(
        f"Champion: `{c.model_name}` v{c.version} (MLflow run `{c.run_id[:8]}`). 95% bootstrap intervals in "
        "brackets; cross-validation = out-of-fold on the training split, hold-out = the 20% never trained on."
        + refit
    )
    rows = []
    for metric in D.METRICS:
        row: dict[str, Any] = {"metric": D.METRIC_LABELS[metric]}
        for prefix, label in (("cv", "cross-validation"), ("test", "hold-out")):
            s = c.stat(prefix, metric)
            fmt = "{:.4f}" if metric in ("r2", "coverage") else "{:,.0f}"
            row[label] = "" if s is None else f"{fmt.format(s[0])} [{fmt.format(s[1])}, {fmt.format(s[2])}]"
        rows.append(row)
    cols = st.columns(4)
    for col, metric in zip(cols, ("rmse", "r2", "mae", "coverage"), strict=True):
        s = c.stat("test", metric)
        if s is not None:
            value = f"{s[0]:.3f}" if metric in ("r2", "coverage") else money(s[0])
            col.metric(f"Hold-out {D.METRIC_LABELS[metric]}", value)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

    st.subheader("Champion vs baseline (cross-validation)")
    if c.candidates.empty:
        st.info("No candidate runs found for this champion.")
    else:
        cand = c.candidates
        fig = go.Figure(
            go.Bar(
                x=cand["candidate"],
                y=cand["cv_rmse"],
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": cand.get("cv_rmse_ci_high", cand["cv_rmse"]) - cand["cv_rmse"],
                    "arrayminus": cand["cv_rmse"] - cand.get("cv_rmse_ci_low", cand["cv_rmse"]),
                },
            )
        )
        fig.update_layout(title="CV RMSE per candidate (lower is better, 95% CI)", yaxis_title="RMSE ($)")
        a, b = st.columns(2)
        a.plotly_chart(fig, width="stretch", key="candidates")
        show = [k for k in ("candidate", "cv_rmse", "cv_mae", "cv_r2", "cv_coverage") if k in cand]
        b.dataframe(cand[show].round(4), hide_index=True, width="stretch")

    ho = None
    if c.refit:  # the champion has seen the hold-out: plot its training-split fit's logged scores
        try:
            ho = logged_holdout(settings.tracking_uri, c.run_id)
        except Exception as exc:
            st.warning(f"Hold-out predictions unavailable: {exc}")
    elif path is None:
        st.info("Hold-out plots need the listings data (see Overview); the metrics above come from MLflow.")
    else:
        try:
            ho = holdout(settings.tracking_uri, c.version, str(path), mtime)
        except Exception as exc:  # the metrics above come from MLflow and stay useful
            st.warning(f"Hold-out predictions unavailable: {exc}")
    if ho is not None:
        st.subheader("Hold-out predictions")
        if c.refit:
            st.caption("Scores of the training-split fit, as logged by the training run.")
        sample = ho.sample(min(len(ho), 4000), random_state=0)
        a, b = st.columns(2)
        top = float(max(ho["actual"].max(), ho["predicted"].max()))
        fig = px.scatter(sample, x="actual", y="predicted", opacity=0.35, title="Predicted vs actual price")
        fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="perfect", line={"dash": "dash"}))
        a.plotly_chart(
            fig.update_traces(marker={"size": 4}, selector={"mode": "markers"}), width="stretch", key="pva"
        )
        fig = px.scatter(
            sample, x="predicted", y="residual", opacity=0.35, title="Residuals (actual - predicted)"
        )
        fig.add_hline(y=0, line_dash="dash")
        b.plotly_chart(fig.update_traces(marker={"size": 4}), width="stretch", key="residuals")
        st.subheader("Interval coverage")
        bands = D.coverage_by_band(ho)
        a, b = st.columns(2)
        a.metric("Hold-out coverage of the 80% interval", f"{ho['covered'].mean():.3f}")
        fig = px.bar(bands, x="predicted price band", y="coverage", title="Coverage by predicted price band")
        fig.add_hline(y=SPEC.interval_coverage, line_dash="dash")
        b.plotly_chart(fig, width="stretch", key="coverage_band")

    st.subheader("Feature importance")
    if c.importance:
        imp = pd.Series(c.importance).sort_values()
        fig = px.bar(
            x=imp.to_numpy(),
            y=imp.index,
            orientation="h",
            title="Permutation importance on the hold-out (RMSE increase when a field is shuffled)",
            labels={"x": "importance", "y": "field"},
        )
        st.plotly_chart(fig, width="stretch", key="importance")
    else:
        st.info("This run has no feature_importance.json artifact.")


def price_predictor(c: D.Champion | None, m: D.Market | None, settings: Settings) -> None:
    st.header("Price Predictor")
    api = settings.carvision_api_url
    st.caption(
        f"Predictions come from the CarVision API at {api}."
        if api
        else "Predictions come from the local champion."
    )
    if c is None and not api:
        st.info(NO_MODEL)
        return
    models = sorted(m.listings["model"].unique()) if m is not None else []
    with st.form("predict"):
        a, b, col3 = st.columns(3)
        if models:
            model = a.selectbox(
                "Model", models, index=models.index("ford f-150") if "ford f-150" in models else 0
            )
        else:
            model = a.text_input("Model (make and model)", value="ford f-150")
        year = b.number_input("Model year", min_value=1900, max_value=2030, value=2013, step=1)
        condition = col3.selectbox("Condition", CONDITIONS, index=CONDITIONS.index("excellent"))
        a, b, col3 = st.columns(3)
        odometer = a.number_input(
            "Odometer (miles)", min_value=0, max_value=2_000_000, value=90_000, step=1000
        )
        cylinders = b.selectbox("Cylinders", ["unknown", 3, 4, 5, 6, 8, 10, 12], index=5)
        fuel = col3.selectbox("Fuel", FUELS)
        a, b, col3 = st.columns(3)
        transmission = a.selectbox("Transmission", TRANSMISSIONS)
        vtype = b.selectbox("Type", TYPES, index=TYPES.index("pickup"))
        color = col3.selectbox("Paint colour", ["unknown", *COLORS])
        is_4wd = st.checkbox("Four-wheel drive", value=True)
        submitted = st.form_submit_button("Predict price")
    if not submitted:
        st.caption("Posting date and days listed are optional inputs; the model uses training medians.")
        return
    record: dict[str, Any] = {
        "model_year": int(year),
        "model": model,
        "condition": condition,
        "cylinders": None if cylinders == "unknown" else int(str(cylinders)),
        "fuel": fuel,
        "odometer": float(odometer),
        "transmission": transmission,
        "type": vtype,
        "paint_color": None if color == "unknown" else color,
        "is_4wd": 1 if is_4wd else 0,
    }
    try:
        if api:
            out = D.predict_via_api(api, record, D.first_api_key(settings))
        else:
            assert c is not None
            out = D.predict_local(local_predictor(settings.tracking_uri, c.version), record)
    except D.PredictionError as exc:
        st.error(f"Prediction failed: {exc}")
        return
    a, b, col3 = st.columns(3)
    a.metric("Predicted price", money(out["price"]))
    b.metric("80% interval", f"{money(out['price_low'])} - {money(out['price_high'])}")
    col3.metric("Model version", f"v{out.get('model_version', '?')}")
    st.session_state["last_prediction"] = out
    st.subheader("Comparable listings")
    if m is None:
        st.info("Comparable listings need the listings data (see Overview).")
        return
    comp = D.comparables(m.listings, record)
    if comp.empty:
        st.info("No comparable listings in the data.")
    else:
        st.caption(
            f"Median asking price of these {len(comp)} listings: {money(float(comp['price'].median()))}"
        )
        st.dataframe(comp, hide_index=True, width="stretch")


# ---------------------------------------------------------------------------------- page
def main() -> None:
    st.set_page_config(page_title="CarVision Market Intelligence", page_icon="🚗", layout="wide")
    st.title("CarVision Market Intelligence")
    settings = get_settings()
    # Without the listings file (e.g. a container with no data) the model sections still work.
    path: Path | None = None
    m: D.Market | None = None
    mtime, data_error = 0.0, ""
    try:
        path = D.data_file(settings)
        mtime = path.stat().st_mtime
        m = market(str(path), mtime, str(settings.home))
    except Exception as exc:
        path, data_error = None, f"Listings data unavailable: {exc}"
    try:
        c = champion(settings.tracking_uri)
    except Exception as exc:
        st.error(f"MLflow at {settings.tracking_uri} is unavailable: {exc}")
        c = None
    tabs = st.tabs(list(SECTIONS))
    with tabs[0]:
        overview(m, data_error)
    with tabs[1]:
        market_analysis(m, data_error)
    with tabs[2]:
        model_metrics(c, path, mtime, settings)
    with tabs[3]:
        price_predictor(c, m, settings)


main()
