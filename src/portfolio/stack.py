"""`portfolio up` / `make run`: a real MLflow server (SQLite backend), every service's API, and
training for any service that has no champion yet. Ctrl-C (or SIGTERM) stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from typing import Any

from rich.console import Console
from rich.table import Table

from portfolio.core import registry
from portfolio.core.processes import (
    bin_path,
    mlflow_server_argv,
    port_in_use,
    start,
    stop,
    wait_http,
)
from portfolio.core.settings import Settings
from portfolio.services import get_spec


def run_stack(settings: Settings, services: list[str], console: Console) -> int:
    state = settings.resolved_state_dir
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    stop_event = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop_event.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    urls: list[tuple[str, str]] = []
    try:
        if settings.mlflow_tracking_uri:
            tracking = settings.mlflow_tracking_uri
            console.print(f"using MLFLOW_TRACKING_URI={tracking} (no local MLflow server started)")
        else:
            # Experiments are created against the SQLite file first, so their artifacts live in
            # the state folder and stay readable with or without the server.
            registry.configure(settings)
            for name in services:
                registry.ensure_experiment(name, settings)
            port = settings.mlflow_port
            if port_in_use(port):
                console.print(f"[red]port {port} is busy: set PORTFOLIO_MLFLOW_PORT[/red]")
                return 2
            mlflow_proc = start(
                mlflow_server_argv(settings.tracking_uri, settings.artifact_root, port),
                log_file=logs / "mlflow.log",
            )
            procs.append(("mlflow", mlflow_proc))
            tracking = f"http://127.0.0.1:{port}"
            console.print(f"starting MLflow server on {tracking} …")
            wait_http(f"{tracking}/health", timeout=120, proc=mlflow_proc)
            urls.append(("MLflow UI", tracking))
        os.environ["MLFLOW_TRACKING_URI"] = tracking
        from portfolio.core.settings import Settings as _S

        remote = _S()  # re-read: every command below uses the server
        registry.configure(remote)
        for name in services:
            spec = get_spec(name)
            if registry.champion_version(spec.name) is None:
                from portfolio.core.training.train import train_service

                console.print(f"{name}: no champion yet → training (a few minutes)…")
                outcome = train_service(spec, remote)
                console.print(f"{name}: registered v{outcome.version} ({outcome.alias})")
        for i, name in enumerate(services):
            port = settings.api_base_port + i
            if port_in_use(port):
                console.print(f"[red]port {port} is busy: set PORTFOLIO_API_BASE_PORT[/red]")
                return 2
            proc = start(
                [bin_path("portfolio"), "serve", name, "--host", settings.host, "--port", str(port)],
                env={"MLFLOW_TRACKING_URI": tracking},
                log_file=logs / f"{name}.log",
            )
            procs.append((name, proc))
            urls.append((f"{get_spec(name).title} API", f"http://{settings.host}:{port}"))
        for (_name, proc), (_, url) in zip(procs[-len(services) :], urls[-len(services) :], strict=True):
            wait_http(f"{url}/ready", timeout=180, proc=proc)
        api_urls = dict(zip(services, urls[-len(services) :], strict=True))
        for name in services:
            for companion in get_spec(name).companions:
                port = getattr(settings, companion.port_setting)
                if port_in_use(port):
                    setting = f"PORTFOLIO_{companion.port_setting.upper()}"
                    console.print(f"[red]port {port} is busy: set {setting}[/red]")
                    return 2
                proc = start(
                    companion.argv(settings.host, port),
                    env={"MLFLOW_TRACKING_URI": tracking, companion.api_url_env: api_urls[name][1]},
                    log_file=logs / f"{companion.name}.log",
                )
                procs.append((companion.title, proc))
                url = f"http://{settings.host}:{port}"
                wait_http(f"{url}{companion.health_path}", timeout=120, proc=proc)
                urls.append((companion.title, url))
        table = Table(title="ML-MLOps Portfolio is up (Ctrl-C stops everything)")
        table.add_column("component")
        table.add_column("URL")
        for label, url in urls:
            table.add_row(label, url)
        console.print(table)
        console.print(f"logs: {logs}")
        while not stop_event.wait(1.0):
            for name, proc in procs:
                if proc.poll() is not None:
                    console.print(f"[red]{name} exited with {proc.returncode}; see {logs}[/red]")
                    return 1
        return 0
    finally:
        console.print("stopping …")
        for _name, proc in reversed(procs):
            stop(proc)
        console.print("stopped.")
