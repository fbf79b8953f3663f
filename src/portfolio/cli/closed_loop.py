"""The retraining trigger: retrain (`promote --if-better`, its other half, is in registry.py)."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer

from portfolio.cli.common import cli_settings, console, parse_since, service_spec
from portfolio.services import SERVICES


class When(enum.StrEnum):
    drift = "drift"
    performance = "performance"
    always = "always"


def retrain(
    service: Annotated[str, typer.Argument(help=f"Service: {', '.join(SERVICES)}, or all")],
    when: Annotated[
        When,
        typer.Option(
            help="drift: when the drift report finds drift; performance: when the champion's realized "
            "performance is degraded; always."
        ),
    ],
    report: Annotated[
        Path | None,
        typer.Option(
            help="A drift or performance report (JSON) to read; default: computed now from the "
            "prediction log (and labels)."
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Computed evidence: predictions from this date/time on (ISO 8601).")
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="`degraded` rule's tolerance (computed performance evidence).")
    ] = 0.05,
) -> None:
    """Read the evidence, train when it asks for it (the gate decides the new version's alias) and
    log the decision and its reason to MLflow (tags retrain.*). Exit 0 whatever was decided; 2 on
    bad input (a report missing, unreadable or of another service)."""
    from portfolio.core.training.retrain import RetrainInputError
    from portfolio.core.training.retrain import retrain as run_retrain

    settings = cli_settings()
    names = list(SERVICES) if service == "all" else [service_spec(service).name]
    if report is not None and len(names) > 1:
        console.print("[red]--report: a report is of one service; name it instead of `all`[/red]")
        raise typer.Exit(2)
    start = parse_since(since)
    for name in names:
        try:
            result = run_retrain(
                service_spec(name), settings, when.value, report_path=report, since=start, tolerance=tolerance
            )
        except RetrainInputError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
        print(json.dumps(result, indent=2, default=str))
        console.print(f"{name}: {result['decision']}: {result['reason']} (MLflow run {result['run_id']})")
