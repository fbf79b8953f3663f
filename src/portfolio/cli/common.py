"""What every command shares: the consoles, settings and service lookup, output files and the
model to score with."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from portfolio.core.settings import Settings, get_settings
from portfolio.services import SERVICES, get_spec

console = Console(stderr=True, soft_wrap=True)  # progress, errors
out = Console(soft_wrap=True)  # results

ServiceArg = Annotated[str, typer.Argument(help=f"Service: {', '.join(SERVICES)}")]


def cli_settings() -> Settings:
    """The settings, with human-readable logs (a command's own output is the result)."""
    from portfolio.core.logs import setup_logging

    s = get_settings()
    setup_logging(s.log_level, json_logs=False)
    return s


def service_spec(name: str) -> Any:
    """The service's spec; an unknown name exits with code 2."""
    require_service(name)
    return get_spec(name)


def require_service(name: str) -> None:
    """Exit with code 2 when ``name`` is not a service, without importing its spec (and pandas,
    scikit-learn and the model libraries with it): `portfolio serve`'s supervisor needs only the
    name."""
    if name not in SERVICES:
        console.print(f"[red]unknown service {name!r}; choose from {', '.join(SERVICES)}[/red]")
        raise typer.Exit(2)


def write_text(path: Path, text: str) -> None:
    """An output file of a command (its folder created when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def scoring_predictor(service: str, version: str | None) -> Any:
    """The version to score with (default: the champion); no champion exits with code 3."""
    from portfolio.core import registry
    from portfolio.core.serving.inference import load_predictor

    settings = cli_settings()
    spec = service_spec(service)
    try:
        return load_predictor(spec, settings, version or None)
    except registry.NoChampionError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None


def parse_since(value: str | None) -> Any:
    """A ``--since`` option: an ISO 8601 date/time (UTC when it names no zone), None when not
    given; text that is not one exits with code 2."""
    from datetime import UTC, datetime

    if not value:
        return None
    try:
        start = datetime.fromisoformat(value)
    except ValueError:
        console.print(f"[red]--since: not an ISO 8601 date/time: {value!r}[/red]")
        raise typer.Exit(2) from None
    return start if start.tzinfo else start.replace(tzinfo=UTC)
