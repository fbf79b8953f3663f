"""End to end: the real `portfolio dashboard` (Streamlit server) talking to the real CarVision API,
loaded in headless Chromium. Saves a screenshot under test-output/."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from portfolio.core.processes import bin_path, free_port, start, stop, wait_http
from tests.carvision.conftest import TrainedCarvision
from tests.helpers import ROOT, ensure_apt

pytestmark = pytest.mark.integration

SECTIONS = ("Overview", "Market Analysis", "Model Metrics", "Price Predictor")
# Text that each section renders only once its data (and, for the model sections, the model) loaded.
RENDERED = (
    "Listings (after cleaning)",  # Overview KPIs
    "listings match the filters",  # Market Analysis
    "Hold-out coverage of the 80% interval",  # Model Metrics (hold-out scored by the champion)
    "Predict price",  # Price Predictor form
)
OUTPUT = ROOT / "test-output"


def chromium(binary: str, url: str, *args: str, timeout: float = 180) -> str:
    profile = tempfile.mkdtemp(prefix="carvision-chromium-")
    try:
        r = subprocess.run(
            [
                binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,2400",
                *args, url,
            ],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        return r.stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_renders_all_sections_in_chromium(
    carvision_trained: TrainedCarvision, carvision_api: str, tmp_path: Path
) -> None:
    browser = ensure_apt("chromium", "chromium")
    port = free_port()
    log = tmp_path / "dashboard.log"
    proc = start(
        [bin_path("portfolio"), "dashboard", "--host", "127.0.0.1", "--port", str(port)],
        env=carvision_trained.env(CARVISION_API_URL=carvision_api),
        log_file=log,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_stcore/health", timeout=120, proc=proc)
        # The first session fills the server's caches (listings, model, hold-out scores); retry
        # until every section has rendered its content or the deadline passes.
        deadline = time.monotonic() + 420
        dom = ""
        while time.monotonic() < deadline:
            dom = chromium(browser, url, "--virtual-time-budget=30000", "--dump-dom")
            if all(text in dom for text in RENDERED):
                break
            time.sleep(2)
        missing = [t for t in RENDERED if t not in dom]
        assert not missing, f"not rendered: {missing}\n{log.read_text()[-3000:]}"
        for section in SECTIONS:
            assert section in dom
        assert "Traceback" not in dom and 'data-testid="stException"' not in dom
        assert "No CarVision model is trained yet" not in dom
        # The predictor goes over HTTP, to the API started for this test.
        assert "Predictions come from the CarVision API at" in dom and carvision_api in dom
        OUTPUT.mkdir(exist_ok=True)
        shot = OUTPUT / "carvision-dashboard.png"
        shot.unlink(missing_ok=True)
        chromium(browser, url, "--virtual-time-budget=30000", f"--screenshot={shot}")
        assert shot.exists() and shot.stat().st_size > 20_000
        assert proc.poll() is None, "the dashboard exited"
    finally:
        stop(proc)
    assert "Traceback" not in log.read_text()
