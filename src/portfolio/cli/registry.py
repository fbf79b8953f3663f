"""Commands on the model registry: promote, models."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.table import Table

from portfolio.cli.common import ServiceArg, cli_settings, console, out, parse_since, service_spec
from portfolio.services import SERVICES


def promote(
    service: ServiceArg,
    version: Annotated[str | None, typer.Argument(help="Version to make champion.")] = None,
    if_better: Annotated[
        bool,
        typer.Option(
            "--if-better",
            help="Promote @challenger only if it wins, by the champion gate's rule, on the labelled "
            "records both versions scored (shadow lines). Exit 0 promoted, 1 kept, 2 nothing to compare.",
        ),
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="--if-better: only predictions from this date/time on (ISO 8601).")
    ] = None,
) -> None:
    """Move alias `champion` to VERSION by hand, or to @challenger with --if-better when it wins on
    live labelled traffic (says why either way)."""
    from portfolio.core import registry

    settings = cli_settings()
    spec = service_spec(service)
    registry.configure(settings)
    if if_better == (version is not None):
        console.print("[red]give VERSION or --if-better (one of them)[/red]")
        raise typer.Exit(2)
    if version is None:
        from portfolio.core.training.retrain import promote_if_better

        decision = promote_if_better(spec, settings, since=parse_since(since))
        print(json.dumps(decision.to_dict(), indent=2))
        colour = "green" if decision.promoted else "yellow"
        console.print(f"[{colour}]{spec.name}: {decision.reason}[/{colour}]")
        raise typer.Exit(decision.code)
    try:
        mv = registry.promote(spec.name, version)
    except Exception as exc:
        console.print(f"[red]cannot promote {spec.name} v{version}: {exc}[/red]")
        raise typer.Exit(2) from None
    out.print(f"{spec.name}: champion → v{mv.version}")


def models(service: Annotated[str | None, typer.Argument(help="One service (default: all).")] = None) -> None:
    """List registered versions with their aliases and hold-out metrics."""
    from portfolio.core import registry

    settings = cli_settings()
    registry.configure(settings)
    for name in [service] if service else list(SERVICES):
        spec = service_spec(name)
        t = Table(title=spec.title)
        for col in ("version", "aliases", f"test_{spec.primary_metric}", "created"):
            t.add_column(col)
        for row in registry.list_versions(name, spec.primary_metric):
            t.add_row(
                row.version,
                ",".join(row.aliases),
                "" if row.holdout is None else f"{row.holdout:.4f}",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(row.created_ms / 1000)),
            )
        out.print(t)
