"""Starting and stopping the platform's real processes (MLflow server, APIs, dashboard) and
waiting for them to answer: used by `portfolio up` and by the integration tests alike."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_http(
    url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None, ok: tuple[int, ...] = (200,)
) -> None:
    """Poll ``url`` until it answers one of ``ok``; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code in ok:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f}s ({last})")


def start(
    argv: list[str],
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group (so stop() can end its workers too)."""
    full_env = {**os.environ, **(env or {})}
    stdout = log_file.open("ab") if log_file else subprocess.DEVNULL
    return subprocess.Popen(
        argv, env=full_env, stdout=stdout, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def bin_path(name: str) -> str:
    """A console script of this environment (mlflow, portfolio, streamlit…)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def mlflow_server_argv(
    backend_uri: str, artifacts_dir: Path, port: int, host: str = "127.0.0.1"
) -> list[str]:
    return [
        bin_path("mlflow"),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
