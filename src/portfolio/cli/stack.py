"""Commands that run long-lived processes beside the APIs: dashboard, up."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from portfolio.cli.common import cli_settings, out, service_spec
from portfolio.services import SERVICES


def dashboard(
    host: Annotated[str | None, typer.Option(help="Bind address (PORTFOLIO_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (PORTFOLIO_DASHBOARD_PORT).")] = None,
) -> None:
    """Start the CarVision Market Intelligence dashboard (Streamlit). Set CARVISION_API_URL to
    predict through a running CarVision API instead of the local champion."""
    from portfolio.carvision.dashboard import streamlit_argv

    settings = cli_settings()
    argv = streamlit_argv(host or settings.host, port or settings.dashboard_port)
    sys.stdout.flush()
    sys.stderr.flush()
    # Become Streamlit (exec, no shell, fixed argument list): signals such as a container's SIGTERM
    # reach the server itself, and its exit code is ours.
    os.execvp(argv[0], argv)  # nosec B606


def up(
    services: Annotated[str, typer.Option(help="Comma-separated services to run.")] = ",".join(SERVICES),
) -> None:
    """Train any service without a champion, start a real MLflow server and the APIs; Ctrl-C stops all."""
    from portfolio.stack import run_stack

    settings = cli_settings()
    names = [s.strip() for s in services.split(",") if s.strip()]
    for n in names:
        service_spec(n)
    sys.exit(run_stack(settings, names, console=out))
