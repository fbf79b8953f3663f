"""Shared by `make bench` (run.py) and `make soak` (soak.py): champions, sample requests, real API
processes and HTTP load from `wrk` (Debian package, installed when missing)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import psutil

from portfolio.core import registry
from portfolio.core.data import read_raw_csv
from portfolio.core.processes import bin_path, free_port, start, wait_all_workers_ready, wait_http
from portfolio.core.schema import validate_frame
from portfolio.core.settings import Settings
from portfolio.services import SERVICES


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    found = shutil.which("wrk")
    assert found, "wrk could not be installed"
    return found


def ensure_champions(settings: Settings, names: Sequence[str]) -> None:
    from portfolio.core.training.train import train_service

    registry.configure(settings)
    for spec in (SERVICES[n] for n in names):
        if registry.champion_version(spec.name) is None:
            print(f"{spec.name}: no champion: training first …", flush=True)
            train_service(spec, settings)


def sample_records(spec: Any, settings: Settings, n: int) -> list[dict[str, Any]]:
    raw = read_raw_csv(settings.resolved_data_dir / spec.data_file)
    result = validate_frame(raw.sample(min(n, len(raw)), random_state=0), spec.fields)
    typed = result.frame[result.valid_mask][spec.feature_names]
    out = []
    for rec in typed.to_dict("records"):
        clean: dict[str, Any] = {}
        for f in spec.fields:
            v = rec[f.name]
            if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
                clean[f.name] = None
            elif f.kind == "int":
                clean[f.name] = int(v)
            elif f.kind == "date":
                clean[f.name] = pd.Timestamp(v).strftime(f.date_format or "%Y-%m-%d")
            else:
                clean[f.name] = v
        out.append(clean)
    return out


def serve_api(
    name: str, settings: Settings, workers: int = 1, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = start(
        [bin_path("portfolio"), "serve", name, "--port", str(port), "--workers", str(workers)],
        env={"MLFLOW_TRACKING_URI": settings.tracking_uri, "PORTFOLIO_LOG_LEVEL": "WARNING", **(env or {})},
        log_file=settings.resolved_state_dir / f"bench-{name}.log",
    )
    base = f"http://127.0.0.1:{port}"
    wait_all_workers_ready(base, timeout=240, proc=proc, in_a_row=20 if workers > 1 else 1)
    return proc, base


def serve_floor(settings: Settings) -> tuple[subprocess.Popen[bytes], str]:
    """The floor (benchmarks/floor.py: bare FastAPI, msgspec decode, constant answer), started as
    the services are: uvicorn, one worker, no access log."""
    port = free_port()
    proc = start(
        [bin_path("uvicorn"), "floor:app", "--app-dir", os.path.dirname(os.path.abspath(__file__)),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log",
         "--log-level", "warning"],
        log_file=settings.resolved_state_dir / "bench-floor.log",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/ready", timeout=60, proc=proc)
    return proc, base


def rss_bytes(pid: int) -> int:
    """Resident memory of a server process and any children (uvicorn workers): `make soak` and
    `make bench` measure it this way."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return int(total)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a server process and any children have used so far."""
    proc = psutil.Process(pid)
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(child.cpu_times()[:2])
    return float(total)


class RssSampler(threading.Thread):
    """Samples a server's resident memory (``rss_bytes``) every ``every_s`` until ``done`` is set;
    ``window_mb`` is the median of the first or last ``seconds`` of samples."""

    def __init__(self, pid: int, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.pid = pid
        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.done.is_set():
            self.samples.append((time.monotonic() - start, rss_bytes(self.pid)))
            self.done.wait(self.every_s)

    def window_mb(self, first: bool, seconds: float) -> float:
        end = self.samples[-1][0]
        picked = [rss for t, rss in self.samples if (t <= seconds if first else t >= end - seconds)]
        return statistics.median(picked) / 1e6


def run_wrk(
    url: str,
    body: dict[str, Any] | Sequence[dict[str, Any]],
    connections: int = 8,
    seconds: int = 20,
    timeout_s: int = 5,
) -> dict[str, float]:
    """POST JSON ``body`` (or each of several bodies in turn) with one wrk thread for ``seconds``.
    ``errors`` counts non-2xx answers; ``socket_errors`` connect/read/write errors and timeouts."""
    wrk = ensure_wrk()
    bodies = [body] if isinstance(body, dict) else list(body)
    # Lua long strings ([==[ … ]==]) carry the JSON as is, without escaping.
    lua_bodies = ",\n".join(f"[==[{json.dumps(b)}]==]" for b in bodies)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(
            f"local bodies = {{\n{lua_bodies}\n}}\n"
            "local i = 0\n"
            'local headers = {["Content-Type"] = "application/json"}\n'
            "request = function()\n"
            "  i = i % #bodies + 1\n"
            '  return wrk.format("POST", nil, headers, bodies[i])\n'
            "end\n"
            "done = function(summary, latency, requests)\n"
            "  local e = summary.errors\n"
            '  io.write(string.format("P50 %d\\nP99 %d\\nNON2XX %d\\nSOCKET %d\\nREQUESTS %d\\n", '
            "latency:percentile(50), latency:percentile(99), e.status, "
            "e.connect + e.read + e.write + e.timeout, summary.requests))\nend\n"
        )
        script = fh.name
    try:
        out = subprocess.run(
            [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s", "-s", script, url],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script)

    def figure(pattern: str) -> float:
        return float(re.search(pattern, out).group(1))  # type: ignore[union-attr]

    return {
        "rps": figure(r"Requests/sec:\s+([\d.]+)"),
        "p50_ms": figure(r"P50 (\d+)") / 1000,
        "p99_ms": figure(r"P99 (\d+)") / 1000,
        "errors": figure(r"NON2XX (\d+)"),
        "socket_errors": figure(r"SOCKET (\d+)"),
        "requests": figure(r"REQUESTS (\d+)"),
    }
