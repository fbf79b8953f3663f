"""The CarVision dashboard, section by section, with Streamlit's AppTest (the real script, run
in-process against a real trained model, real data and, for the HTTP path, the real API)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from portfolio.carvision.dashboard import APP
from portfolio.carvision.dashboard import data as D
from portfolio.carvision.spec import SPEC
from portfolio.carvision.spec import SPEC as CARVISION
from portfolio.core import registry
from portfolio.core.processes import free_port
from portfolio.core.serving.inference import Predictor
from portfolio.core.settings import get_settings
from tests.support.live import TrainedService, require_data

pytestmark = pytest.mark.integration

DEFAULT_RECORD = {
    "model_year": 2013, "model": "ford f-150", "condition": "excellent", "cylinders": 8, "fuel": "gas",
    "odometer": 90000.0, "transmission": "automatic", "type": "pickup", "paint_color": None, "is_4wd": 1,
}  # fmt: skip


def run_app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=600)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.label for t in at.tabs] == ["Overview", "Market Analysis", "Model Metrics", "Price Predictor"]
    return at


def metrics(block: object) -> dict[str, str]:
    return {m.label: m.value for m in block.metric}  # type: ignore[attr-defined]


@pytest.fixture
def app_env(carvision_trained: TrainedService, monkeypatch: pytest.MonkeyPatch) -> TrainedService:
    require_data(CARVISION)
    carvision_trained.apply_env(monkeypatch)
    return carvision_trained


def test_overview_kpis_and_data_quality(app_env: TrainedService) -> None:
    at = run_app()
    tab = at.tabs[0]
    report = app_env.outcome.data_report
    kpis = metrics(tab)
    assert kpis["Listings (after cleaning)"] == f"{report['rows_used']:,}"
    assert kpis["Median price"].startswith("$") and kpis["Posted"] == "May 2018 - Apr 2019"
    quality, exclusions = (df.value for df in tab.dataframe)
    missing = dict(zip(quality["column"], quality["missing"], strict=True))
    assert missing["model_year"] > 3000 and missing["is_4wd"] > 20000 and missing["model"] == 0
    excluded = dict(zip(exclusions["rule"], exclusions["rows excluded"], strict=True))
    assert excluded["price_below_1000"] == report["cleaning"]["excluded_by_rule"]["price_below_1000"]
    assert excluded["price_above_100000"] == report["cleaning"]["excluded_by_rule"]["price_above_100000"]


def test_market_analysis_filters_drive_the_charts(app_env: TrainedService) -> None:
    at = run_app()
    tab = at.tabs[1]
    assert len(tab.get("plotly_chart")) == 7
    at.multiselect(key="make").set_value(["toyota"])
    at.multiselect(key="type").set_value(["sedan"])
    at.multiselect(key="condition").set_value(["excellent", "good"])
    at.slider(key="years").set_value((2008, 2016))
    at.slider(key="prices").set_value((3000.0, 20000.0))
    at.run()
    assert not at.exception
    market = D.load_market(require_data(CARVISION), app_env.settings)
    expected = D.filter_listings(
        market.listings, ["toyota"], ["sedan"], ["excellent", "good"], (2008, 2016), (3000.0, 20000.0)
    )
    assert 100 < len(expected) < len(market.listings) / 10
    captions = [c.value for c in at.tabs[1].caption]
    assert f"{len(expected):,} of {len(market.listings):,} listings match the filters" in captions
    assert metrics(at.tabs[1])["Median price"] == f"${expected['price'].median():,.0f}"
    assert len(at.tabs[1].get("plotly_chart")) == 7
    # Filters that match nothing say so instead of drawing empty charts.
    at.slider(key="prices").set_value((60000.0, 61000.0))
    at.multiselect(key="make").set_value(["kia"])
    at.run()
    assert not at.exception
    assert any("No listings match" in w.value for w in at.tabs[1].warning)


def test_model_metrics_from_mlflow(app_env: TrainedService) -> None:
    at = run_app()
    tab = at.tabs[2]
    test = app_env.outcome.test
    kpis = metrics(tab)
    assert kpis["Hold-out RMSE ($)"] == f"${test['rmse']['value']:,.0f}"
    assert kpis["Hold-out R²"] == f"{test['r2']['value']:.3f}"
    assert kpis["Hold-out 80% interval coverage"] == f"{test['coverage']['value']:.3f}"
    # Recomputed from the champion on the same hold-out rows, the coverage matches the run's.
    assert kpis["Hold-out coverage of the 80% interval"] == f"{test['coverage']['value']:.3f}"
    table = tab.dataframe[0].value
    rmse_row = table[table["metric"] == "RMSE ($)"].iloc[0]
    assert rmse_row["hold-out"].startswith(f"{test['rmse']['value']:,.0f} [")
    candidates = tab.dataframe[1].value
    assert candidates["candidate"].tolist() == ["xgboost", "random_forest"]  # best first
    charts = tab.get("plotly_chart")
    assert len(charts) == 5  # candidates, predicted-vs-actual, residuals, coverage by band, importance
    assert "Champion: `xgboost` v1" in tab.caption[0].value


def test_price_predictor_with_the_local_champion(app_env: TrainedService) -> None:
    at = run_app()
    assert "local champion" in at.tabs[3].caption[0].value
    at.tabs[3].button[0].click()
    at.run()
    assert not at.exception
    shown = metrics(at.tabs[3])
    predictor = Predictor(SPEC, registry.load_champion(SPEC, app_env.settings))
    expected = predictor.predict_records([DEFAULT_RECORD | {"date_posted": None, "days_listed": None}])[0]
    assert shown["Predicted price"] == f"${expected['price']:,.0f}"
    assert shown["80% interval"] == f"${expected['price_low']:,.0f} - ${expected['price_high']:,.0f}"
    assert shown["Model version"] == "v1"
    comparables = at.tabs[3].dataframe[0].value
    assert len(comparables) == 10 and (comparables["model"] == "ford f-150").all()
    assert comparables["model_year"].between(2011, 2015).all()


def test_price_predictor_calls_the_api_over_http(
    carvision_trained: TrainedService, carvision_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    carvision_trained.apply_env(monkeypatch, CARVISION_API_URL=carvision_api)
    at = run_app()
    assert carvision_api in at.tabs[3].caption[0].value
    at.tabs[3].button[0].click()
    at.run()
    assert not at.exception
    local = at.session_state["last_prediction"]
    import httpx

    direct = httpx.post(f"{carvision_api}/predict", json=DEFAULT_RECORD, timeout=30).json()
    assert local == direct  # exactly what the API answered, model_version included
    # An unreachable API is a clear message, not a traceback.
    carvision_trained.apply_env(monkeypatch, CARVISION_API_URL=f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    at = run_app()
    at.tabs[3].button[0].click()
    at.run()
    assert not at.exception
    assert any("unreachable" in e.value for e in at.tabs[3].error)


def test_clear_messages_when_no_model_is_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, carvision_trained: TrainedService
) -> None:
    require_data(CARVISION)
    empty = tmp_path / "empty-state"
    monkeypatch.setenv("PORTFOLIO_STATE_DIR", str(empty))
    monkeypatch.setenv("PORTFOLIO_MODELS_DIR", str(empty / "models"))
    for key in ("MLFLOW_TRACKING_URI", "PORTFOLIO_MLFLOW_TRACKING_URI", "CARVISION_API_URL"):
        monkeypatch.delenv(key, raising=False)
    at = run_app()
    assert not at.error, [e.value for e in at.error]
    assert any("No CarVision model is trained yet" in i.value for i in at.tabs[2].info)
    assert any("No CarVision model is trained yet" in i.value for i in at.tabs[3].info)
    # The data sections work without a model.
    assert (
        metrics(at.tabs[0])["Listings (after cleaning)"]
        == f"{carvision_trained.outcome.data_report['rows_used']:,}"
    )


def test_without_the_listings_file_the_model_sections_still_work(
    app_env: TrainedService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container has the registry but no data: Overview/Market say so, the model sections work."""
    monkeypatch.setenv("PORTFOLIO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PORTFOLIO_DVC_PULL", "false")
    at = run_app()
    for tab in at.tabs[:2]:
        assert any("Listings data unavailable" in w.value for w in tab.warning)
    assert metrics(at.tabs[2])["Hold-out RMSE ($)"] == f"${app_env.outcome.test['rmse']['value']:,.0f}"
    at.tabs[3].text_input[0].set_value("toyota camry")
    at.tabs[3].button[0].click()
    at.run()
    assert not at.exception
    assert metrics(at.tabs[3])["Predicted price"].startswith("$")
    assert at.session_state["last_prediction"]["model_version"] == "1"
