"""End to end: the real `portfolio dashboard` (Streamlit server) talking to the real CarVision API,
loaded in headless Chromium (Debian package, installed when missing). Every section is opened and
saved as a screenshot under test-output/."""

from __future__ import annotations

import time
from pathlib import Path

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
            shot = OUTPUT / f"carvision-dashboard-{label.lower().replace(' ', '-')}.png"
            browser.screenshot(shot)
            assert shot.stat().st_size > 30_000, f"{shot} looks blank"
        assert browser.evaluate("document.querySelectorAll('[data-testid=\"stException\"]').length") == 0
        assert proc.poll() is None, "the dashboard exited"
    finally:
        if browser is not None:
            browser.close()
        stop(proc)
    assert "Traceback" not in log.read_text()
