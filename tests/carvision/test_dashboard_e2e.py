"""End to end: the real `portfolio dashboard` (Streamlit server) talking to the real CarVision API,
loaded in headless Chromium (Debian package, installed when missing). Every section is opened and
checked for what it shows (its figures, its charts drawn with data), then saved as a screenshot
under test-output/."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from portfolio.core.processes import bin_path, free_port, start, stop, wait_http
from tests.carvision.cdp import Chromium
from tests.support.helpers import ROOT, ensure_apt
from tests.support.live import TrainedService

pytestmark = pytest.mark.integration

# Section → text it renders only once its data (and, for the model sections, the model) loaded.
SECTIONS = {
    "Overview": "Listings (after cleaning)",
    "Market Analysis": "listings match the filters",
    "Model Metrics": "Hold-out coverage of the 80% interval",
    "Price Predictor": "Predict price",
}
OUTPUT = ROOT / "test-output"
VISIBLE_TEXT = "document.body ? document.body.innerText : ''"
# What the open tab shows: its metric tiles (label → value) and, for each Plotly chart, its drawn
# size and how many data points its traces hold.
SHOWN = """(() => {
  const panel = [...document.querySelectorAll('[role=tabpanel]')]
    .find(p => !p.hidden && p.getBoundingClientRect().height > 0);
  if (!panel) return null;
  const metrics = {};
  for (const m of panel.querySelectorAll('[data-testid=stMetric]')) {
    const label = m.querySelector('[data-testid=stMetricLabel]');
    const value = m.querySelector('[data-testid=stMetricValue]');
    if (label && value) metrics[label.innerText.trim()] = value.innerText.trim();
  }
  // A trace's array is a plain array or, from Plotly 6 on, {dtype, bdata} (base64 of its values).
  const bytes = {i1: 1, u1: 1, i2: 2, u2: 2, i4: 4, u4: 4, f4: 4, f8: 8};
  const size = v => !v ? 0 : v.length !== undefined ? v.length
    : v.bdata ? Math.floor(atob(v.bdata).length / (bytes[v.dtype] || 8)) : 0;
  const charts = [...panel.querySelectorAll('.js-plotly-plot')].map(c => {
    const r = c.getBoundingClientRect();
    const points = (c.data || []).reduce((n, t) =>
      n + Math.max(...['x', 'y', 'values', 'z'].map(k => size(t[k]))), 0);
    return {width: r.width, height: r.height, traces: (c.data || []).length, points,
            drawn: c.querySelectorAll('.main-svg').length};
  });
  return {metrics, charts};
})()"""
# Plotly charts each section draws (fewer: a chart failed to render).
CHARTS = {"Overview": 0, "Market Analysis": 7, "Model Metrics": 4, "Price Predictor": 0}


def shown(browser: Chromium, label: str) -> dict[str, Any]:
    """Metric tiles and drawn charts of the open tab; every chart must have data and a size."""
    view = browser.evaluate(SHOWN)
    assert view is not None, f"{label}: no visible tab panel"
    charts = view["charts"]
    assert len(charts) >= CHARTS[label], (label, charts)
    for chart in charts:
        assert chart["width"] > 100 and chart["height"] > 100 and chart["drawn"] > 0, (label, chart)
        assert chart["traces"] >= 1 and chart["points"] >= 1, (label, chart)
    return dict(view["metrics"])


def open_tab(browser: Chromium, label: str, expect: str, timeout: float = 60) -> str:
    """Click a section's tab and wait until its content is visible; returns the visible text."""
    clicked = browser.evaluate(
        "(() => { const t = [...document.querySelectorAll('[role=tab]')]"
        f".find(b => b.innerText.trim() === {label!r}); if (t) t.click(); return !!t; }})()"
    )
    assert clicked, f"no tab {label!r}"
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = str(browser.evaluate(VISIBLE_TEXT) or "")
        if expect in text:
            time.sleep(1.5)  # let the Plotly charts of the section draw before the screenshot
            return text
        time.sleep(0.5)
    raise AssertionError(f"{label}: {expect!r} not visible after clicking the tab:\n{text[-2000:]}")


def test_dashboard_renders_all_sections_in_chromium(
    carvision_trained: TrainedService, carvision_api: str, tmp_path: Path
) -> None:
    binary = ensure_apt("chromium", "chromium")
    out = carvision_trained.outcome
    port = free_port()
    log = tmp_path / "dashboard.log"
    proc = start(
        [bin_path("portfolio"), "dashboard", "--host", "127.0.0.1", "--port", str(port)],
        env=carvision_trained.env(CARVISION_API_URL=carvision_api),
        log_file=log,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    browser: Chromium | None = None
    try:
        wait_http(f"{url}/_stcore/health", timeout=120, proc=proc)
        browser = Chromium(binary)
        browser.goto(url)
        # All four sections render in one page (hidden tab panels are in the DOM too); the first
        # session also fills the server's caches (listings, model, hold-out scores).
        html = browser.wait_for(tuple(SECTIONS.values()), timeout=420)
        missing = [s for s, text in SECTIONS.items() if text not in html]
        assert not missing, f"sections not rendered: {missing}\n{log.read_text()[-3000:]}"
        assert 'data-testid="stException"' not in html and "Traceback" not in html
        assert "No CarVision model is trained yet" not in html
        # The predictor goes over HTTP, to the API started for this test.
        assert "Predictions come from the CarVision API at" in html and carvision_api in html
        OUTPUT.mkdir(exist_ok=True)
        for label, expect in SECTIONS.items():
            text = open_tab(browser, label, expect)
            assert "Traceback" not in text
            if label == "Price Predictor":
                # Submit the form: the dashboard asks the API over HTTP and shows price + interval.
                assert browser.evaluate(
                    "(() => { const b = [...document.querySelectorAll('button')]"
                    ".find(b => b.innerText.trim() === 'Predict price'); if (b) b.click(); return !!b; })()"
                )
                text = open_tab(browser, label, "Comparable listings")
                assert "Predicted price" in text and "80% interval" in text and "v1" in text
            metrics = shown(browser, label)
            if label == "Overview":
                assert (
                    int(metrics["Listings (after cleaning)"].replace(",", "")) == out.data_report["rows_used"]
                )
                assert re.fullmatch(r"\$\d{1,3}(,\d{3})*", metrics["Median price"]), metrics
            elif label == "Model Metrics":  # the champion's own hold-out figures
                assert metrics["Hold-out R²"] == f"{out.test['r2']['value']:.3f}", metrics
                assert metrics["Hold-out RMSE ($)"] == f"${out.test['rmse']['value']:,.0f}", metrics
            elif label == "Price Predictor":  # the API's answer for the form's listing
                assert metrics["Model version"] == f"v{out.version}", metrics
                assert re.fullmatch(r"\$\d{1,3}(,\d{3})*", metrics["Predicted price"]), metrics
            shot = OUTPUT / f"carvision-dashboard-{label.lower().replace(' ', '-')}.png"
            browser.screenshot(shot)  # for a human to look at; the checks above are on the page
        assert browser.evaluate("document.querySelectorAll('[data-testid=\"stException\"]').length") == 0
        assert proc.poll() is None, "the dashboard exited"
    finally:
        if browser is not None:
            browser.close()
        stop(proc)
    assert "Traceback" not in log.read_text()
