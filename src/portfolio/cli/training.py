"""Commands that fit and measure models: train, evaluate, learning-curve, cv, validate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from portfolio.cli.common import (
    ServiceArg,
    cli_settings,
    console,
    out,
    scoring_predictor,
    service_spec,
    write_text,
)
from portfolio.core.settings import get_settings
from portfolio.services import SERVICES, get_spec


def _metrics_table(title: str, cv: dict[str, Any], test: dict[str, Any]) -> Table:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("CV (out-of-fold) [95% CI]", justify="right")
    t.add_column("hold-out [95% CI]", justify="right")
    for k, v in cv.items():
        tv = test.get(k)
        t.add_row(
            k,
            f"{v['value']:.4f} [{v['ci_low']:.4f}, {v['ci_high']:.4f}]",
            f"{tv['value']:.4f} [{tv['ci_low']:.4f}, {tv['ci_high']:.4f}]" if tv else "",
        )
    return t


def train(
    service: ServiceArg,
    summary_json: Annotated[
        Path | None, typer.Option(help="Also write the summary here (DVC metrics).")
    ] = None,
) -> None:
    """Cross-validate, fit, evaluate, log to MLflow, register and gate (`all` trains every service)."""
    from portfolio.core.training.train import train_service

    settings = cli_settings()
    names = list(SERVICES) if service == "all" else [service]
    summaries = []
    for name in names:
        spec = service_spec(name)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            tasks: dict[str, Any] = {}

            def on_progress(
                desc: str, done: int, total: int, tasks: dict[str, Any] = tasks, progress: Any = progress
            ) -> None:
                if desc not in tasks:
                    tasks[desc] = progress.add_task(desc, total=total)
                progress.update(tasks[desc], completed=done)

            outcome = train_service(spec, settings, progress=on_progress)
        out.print(
            _metrics_table(f"{spec.title}: {outcome.best} v{outcome.version}", outcome.cv, outcome.test)
        )
        cand = Table(title="candidates (cross-validation)")
        cand.add_column("candidate")
        cand.add_column(f"cv_{spec.primary_metric}", justify="right")
        for cname, vals in outcome.candidates.items():
            cand.add_row(cname, f"{vals[f'cv_{spec.primary_metric}']:.4f}")
        out.print(cand)
        if outcome.threshold is not None:
            out.print(f"threshold: {outcome.threshold:.4f}")
        if outcome.refit_full:
            out.print(
                f"registered model refit on all {outcome.final_fit_rows} rows after evaluation "
                "(figures above: training-split fit)"
            )
        out.print(
            f"registered {spec.name} v{outcome.version} → alias [bold]{outcome.alias}[/bold] "
            f"({outcome.gate['reason']})"
        )
        summaries.append(outcome.summary())
    if summary_json:
        write_text(summary_json, json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))


def evaluate(
    service: ServiceArg,
    labeled: Annotated[Path | None, typer.Argument(help="Labeled CSV (raw columns + target).")] = None,
    holdout: Annotated[bool, typer.Option(help="Evaluate on the training hold-out split instead.")] = False,
    version: Annotated[str | None, typer.Option(help="Registered version (default: champion).")] = None,
    output: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
) -> None:
    """Metrics (with 95% bootstrap intervals) of the champion on labeled data, printed as JSON."""
    from portfolio.core.data import DataUnavailableError, load_training_data
    from portfolio.core.training.assess import assess_version

    predictor = scoring_predictor(service, version)
    settings = get_settings()
    spec = predictor.spec
    if labeled is None and not holdout:
        console.print("[red]give a LABELED.csv or --holdout[/red]")
        raise typer.Exit(2)
    try:
        ds = load_training_data(spec, settings, labeled)
    except DataUnavailableError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except Exception as exc:
        console.print(f"[red]{labeled}: {exc}[/red]")
        raise typer.Exit(2) from None
    result = assess_version(predictor, settings, ds, holdout, "hold-out split" if holdout else str(labeled))
    text = json.dumps(result, indent=2)
    if output:
        write_text(output, text)
    print(text)


def learning_curve_cmd(
    service: ServiceArg,
    candidate: Annotated[
        str | None, typer.Option(help="Candidate model (default: the champion's candidate).")
    ] = None,
    fractions: Annotated[
        str, typer.Option(help="Comma-separated fractions of the non-test rows to train on.")
    ] = "0.25,0.5,0.75,1",
    repeats: Annotated[int, typer.Option(help="Repeats, each with its own random test rows.")] = 3,
    test_fraction: Annotated[float, typer.Option(help="Share of the rows held out per repeat.")] = 0.1,
    output: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
) -> None:
    """Held-out metrics against the number of training rows: would more data help? (Fits the
    candidate once per fraction and repeat; params from params.yaml.)"""
    from portfolio.core import registry
    from portfolio.core.training.learning_curve import learning_curve
    from portfolio.core.training.train import load_params

    settings = cli_settings()
    spec = service_spec(service)
    try:
        fracs = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        console.print(f"[red]--fractions: not a list of numbers: {fractions!r}[/red]")
        raise typer.Exit(2) from None
    name = candidate
    if name is None:
        registry.configure(settings)
        name = registry.champion_candidate(spec.name)
    if name is None:
        console.print(
            f"[red]{spec.name} has no champion to take the candidate from: pass --candidate "
            f"(one of {', '.join(spec.candidates)})[/red]"
        )
        raise typer.Exit(2)
    params = dict((load_params(spec.name, settings).get("candidates") or {}).get(name) or {})
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"{spec.name}: learning curve {name}", total=None)
        try:
            curve = learning_curve(
                spec,
                settings,
                name,
                params,
                fracs,
                repeats=repeats,
                test_fraction=test_fraction,
                progress=lambda desc, done, total: bar.update(task, completed=done, total=total),
            )
        except ValueError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
    out.print(
        f"{spec.title}: {name}, {curve.rows:,} rows, {curve.test_rows:,} test rows per repeat, "
        f"{curve.repeats} repeats\n"
    )
    out.print(curve.to_markdown())
    if output:
        write_text(output, json.dumps(curve.summary(), indent=2))


def cv_cmd(
    service: Annotated[str, typer.Argument(help=f"Service: {', '.join(SERVICES)}, or all")],
    candidate: Annotated[
        str | None, typer.Option(help="One candidate model (default: every candidate of the service).")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Repeats, each with its own shuffle into folds.")] = 3,
    folds: Annotated[int | None, typer.Option(help="Folds per repeat (default PORTFOLIO_CV_FOLDS).")] = None,
    output: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
) -> None:
    """Repeated cross-validation estimate of each candidate on every usable row: threshold-free
    metrics and the decision rule (threshold or interval, chosen on the other folds) as
    mean ± sd (min-max) over repeats x folds. Params from params.yaml."""
    from portfolio.core.training.cv import best_estimate, repeated_cv, to_markdown
    from portfolio.core.training.train import load_params

    settings = cli_settings()
    specs = [get_spec(n) for n in SERVICES] if service == "all" else [service_spec(service)]
    if candidate is not None and len(specs) > 1:
        console.print("[red]--candidate needs one service, not all[/red]")
        raise typer.Exit(2)
    results: dict[str, Any] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    for spec in specs:
        names = [candidate] if candidate else list(spec.candidates)
        all_params = load_params(spec.name, settings).get("candidates") or {}
        estimates = []
        with Progress(*columns, console=console) as bar:
            for name in names:
                task = bar.add_task(f"{spec.name}: repeated CV {name}", total=None)

                def show(desc: str, done: int, total: int, task: Any = task) -> None:
                    bar.update(task, completed=done, total=total)

                try:
                    estimates.append(
                        repeated_cv(
                            spec,
                            settings,
                            name,
                            dict(all_params.get(name) or {}),
                            repeats=repeats,
                            folds=folds,
                            progress=show,
                        )
                    )
                except ValueError as exc:
                    console.print(f"[red]{exc}[/red]")
                    raise typer.Exit(2) from None
        best = best_estimate(spec, estimates)
        out.print(
            f"{spec.title}: {best.rows:,} rows, {best.repeats} x {best.folds}-fold CV; "
            f"best by mean {spec.primary_metric}: {best.candidate}\n"
        )
        out.print(to_markdown(estimates))
        results[spec.name] = {"chosen": best.candidate, "candidates": [e.summary() for e in estimates]}
    if output:
        write_text(output, json.dumps(results, indent=2))


def validate(
    service: ServiceArg,
    file: Annotated[Path | None, typer.Argument(help="CSV to check (default: the raw data).")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """Validate a data file against the service's schema; report bad rows by reason."""
    from portfolio.core.data import load_training_data

    settings = cli_settings()
    spec = service_spec(service)
    ds = load_training_data(spec, settings, file)
    report = ds.report()
    text = json.dumps(report, indent=2, default=str)
    if output:
        write_text(output, text)
    t = Table(title=f"{spec.name}: {report['file']}")
    t.add_column("check")
    t.add_column("rows", justify="right")
    t.add_row("rows in file", str(report["rows_in_file"]))
    t.add_row("rows used for training", str(report["rows_used"]))
    for reason, n in report["schema"]["by_reason"].items():
        t.add_row(f"schema: {reason}", str(n))
    if report["target_invalid_rows"]:
        t.add_row("unusable target", str(report["target_invalid_rows"]))
    for rule, n in ((report.get("cleaning") or {}).get("excluded_by_rule") or {}).items():
        t.add_row(f"cleaning: {rule}", str(n))
    out.print(t)
