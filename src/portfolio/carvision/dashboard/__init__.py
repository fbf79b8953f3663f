"""The CarVision Market Intelligence dashboard (Streamlit): ``app.py`` is the page, ``data.py`` what
it shows. ``portfolio dashboard`` and ``portfolio up`` start it with ``streamlit_argv``."""

from __future__ import annotations

from pathlib import Path

from portfolio.core.processes import bin_path

APP = Path(__file__).with_name("app.py")


def streamlit_argv(host: str, port: int) -> list[str]:
    """`streamlit run app.py`, headless, without telemetry or a file watcher."""
    return [
        bin_path("streamlit"),
        "run",
        str(APP),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]
