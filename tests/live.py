"""Real `portfolio serve` processes for the reliability tests: uvicorn on a free loopback port,
pointed at a test's isolated state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

from portfolio.core.processes import bin_path, free_port, start, stop, wait_http
from portfolio.core.settings import Settings
from tests.helpers import ROOT


def state_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment that points a `portfolio` subprocess at ``settings``' isolated state."""
    return {
        "PORTFOLIO_STATE_DIR": str(settings.resolved_state_dir),
        "PORTFOLIO_MODELS_DIR": str(settings.resolved_models_dir),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "PORTFOLIO_MODEL_POLL_INTERVAL_S": "0",
        "PORTFOLIO_BOOTSTRAP_ROUNDS": str(settings.bootstrap_rounds),
        "PORTFOLIO_LOG_LEVEL": "WARNING",
        "PORTFOLIO_API_KEYS": "",
        "PORTFOLIO_ADMIN_API_KEYS": "",
        **extra,
    }


@dataclass
class LiveAPI:
    url: str
    proc: Popen[bytes]
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@contextmanager
def live_api(service: str, env: dict[str, str], log_dir: Path, timeout: float = 180) -> Iterator[LiveAPI]:
    """`portfolio serve SERVICE` until the block ends (SIGTERM, then SIGKILL if it hangs)."""
    port = free_port()
    log = log_dir / f"{service}-{port}.log"
    proc = start(
        [bin_path("portfolio"), "serve", service, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        log_file=log,
        cwd=ROOT,
    )
    api = LiveAPI(f"http://127.0.0.1:{port}", proc, log)
    try:
        try:
            wait_http(f"{api.url}/ready", timeout=timeout, proc=proc)
        except Exception as exc:
            raise AssertionError(f"{service} API did not start ({exc}):\n{api.log_tail()}") from None
        yield api
    finally:
        stop(proc)
