"""Commands that watch served models: drift, feedback, performance, explain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from portfolio.cli.common import (
    ServiceArg,
    cli_settings,
    console,
    out,
    parse_since,
    scoring_predictor,
    service_spec,
    write_text,
)


def drift(
    service: ServiceArg,
    current: Annotated[Path, typer.Argument(help="CSV batch to check (the dataset's raw columns).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON report.")],
    reference: Annotated[
        Path | None, typer.Option(help="Reference CSV (default: the model's training reference).")
    ] = None,
    html: Annotated[Path | None, typer.Option(help="HTML report (default: OUTPUT with .html).")] = None,
    version: Annotated[str | None, typer.Option(help="Registered version (default: champion).")] = None,
    fail_on_drift: Annotated[bool, typer.Option(help="Exit with code 1 when drift is detected.")] = False,
) -> None:
    """Data drift of a batch vs the training data: per feature PSI + KS (numeric) or PSI + chi-square
    (categorical), a threshold and `drifted`; overall `drift_detected`. Writes JSON and HTML."""
    from portfolio.core import registry
    from portfolio.core.monitoring.reference import ReferenceUnavailable
    from portfolio.core.monitoring.report import DriftInputError, drift_from_files, write_html
    from portfolio.core.serving.inference import load_predictor

    settings = cli_settings()
    spec = service_spec(service)
    predictor = None
    try:
        predictor = load_predictor(spec, settings, version or None)
    except registry.NoChampionError as exc:
        if reference is None:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(3) from None
    try:
        report = drift_from_files(spec, settings, current, predictor=predictor, reference_path=reference)
    except (DriftInputError, ReferenceUnavailable) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    write_text(output, json.dumps(report, indent=2))
    html_path = write_html(report, html or output.with_suffix(".html"))
    t = Table(title=f"{spec.name}: drift of {current.name} ({report['current']['rows']} valid rows)")
    for col in ("feature", "method", "PSI", "p-value", "drifted"):
        t.add_column(col)
    for name, r in report["features"].items():
        flag = "[red]yes[/red]" if r["drifted"] else "no"
        t.add_row(name, r["method"], f"{r['psi']:.4f}", f"{r['pvalue']:.3g}", flag)
    out.print(t)
    verdict = "[red]drift detected[/red]" if report["drift_detected"] else "[green]no drift[/green]"
    out.print(
        f"{verdict}: {report['n_drifted']} of {len(report['features'])} features"
        + "".join(f" {name}" for name in report["drifted_features"])
        + f"; {report['current']['invalid_rows']} invalid rows excluded "
        f"→ {output}, {html_path}"
    )
    if fail_on_drift and report["drift_detected"]:
        raise typer.Exit(1)


def feedback(
    service: ServiceArg,
    labels: Annotated[
        Path, typer.Argument(help="CSV with columns request_id,label (the raw target's form).")
    ],
) -> None:
    """Join true outcomes to the logged predictions by request id (PORTFOLIO_PREDICTION_LOG_DIR).
    Unknown ids, duplicate ids (the last wins) and invalid rows are counted and reported."""
    from portfolio.core.monitoring.feedback import FeedbackInputError, record_feedback

    settings = cli_settings()
    spec = service_spec(service)
    try:
        report = record_feedback(spec, settings.resolved_prediction_log_dir, labels)
    except FeedbackInputError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    print(json.dumps(report, indent=2))
    console.print(
        f"{report['joined']} labels joined, {report['unknown_ids']} unknown ids, "
        f"{report['duplicate_ids']} duplicate ids (last wins), {report['invalid_rows']} invalid rows "
        f"of {report['rows_in_file']}"
    )


def performance(
    service: ServiceArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON report.")],
    since: Annotated[
        str | None, typer.Option(help="Only predictions made from this date/time on (ISO 8601, UTC).")
    ] = None,
    html: Annotated[Path | None, typer.Option(help="HTML report (default: OUTPUT with .html).")] = None,
    tolerance: Annotated[
        float, typer.Option(help="`degraded` rule: share of the hold-out figure allowed to be lost.")
    ] = 0.05,
) -> None:
    """Realized metrics (95% bootstrap intervals) of the served versions on labelled predictions,
    beside their hold-out figures, with `degraded`, and champion vs shadow challenger on the same
    labelled rows; JSON + HTML, and the API's /metrics."""
    from portfolio.core import registry
    from portfolio.core.monitoring.performance import performance_report, save_latest, write_html

    settings = cli_settings()
    spec = service_spec(service)
    start = parse_since(since)
    if not 0 <= tolerance < 1:
        console.print(f"[red]--tolerance: must be in [0, 1), not {tolerance}[/red]")
        raise typer.Exit(2)
    registry.configure(settings)
    try:
        report = performance_report(
            spec,
            settings.resolved_prediction_log_dir,
            since=start,
            rounds=settings.bootstrap_rounds,
            seed=settings.seed,
            tolerance=tolerance,
        )
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    write_text(output, json.dumps(report, indent=2))
    html_path = write_html(report, html or output.with_suffix(".html"))
    save_latest(report, settings.resolved_prediction_log_dir)
    t = Table(title=f"{spec.name}: realized performance ({report['rows']} labelled predictions)")
    for col in ("version", "rows", "metric", "realized [95% CI]", "hold-out", "degraded"):
        t.add_column(col)
    for version, v in report["versions"].items():
        for name, m in v["metrics"].items():
            hold = (v["holdout_metrics"] or {}).get(name) or {}
            real = (
                "n/a" if m["value"] is None else f"{m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"
            )
            t.add_row(
                version,
                str(v["rows"]),
                name,
                real,
                "" if hold.get("value") is None else f"{hold['value']:.4f}",
                "yes" if v["degraded"] else "no",
            )
    out.print(t)
    for comp in report["comparisons"]:  # champion vs shadow challenger on the same labelled rows
        d = {k: "n/a" if v is None else f"{v:.4f}" for k, v in comp["difference"].items()}
        out.print(
            f"v{comp['champion_version']} vs challenger v{comp['challenger_version']}: {comp['reason']}; "
            f"{comp['primary_metric']} difference {d['value']} [{d['ci_low']}, {d['ci_high']}]"
        )
    out.print(f"{report['degraded_reason']} → {output}, {html_path}")


def explain(
    service: ServiceArg,
    record: Annotated[str, typer.Argument(help="One record as JSON, or a path to a .json file.")],
    version: Annotated[str | None, typer.Option(help="Registered version (default: champion).")] = None,
) -> None:
    """One record's prediction plus per-field contributions that add up, with the base value, to
    the model output (as `POST /explain`), as JSON."""
    from pydantic import ValidationError

    from portfolio.core.explain.record import explain_record
    from portfolio.core.monitoring.reference import ReferenceUnavailable, load_reference
    from portfolio.core.schema import request_model

    spec = service_spec(service)
    text = Path(record).read_text() if record.endswith(".json") else record
    try:
        values = (
            request_model(f"{spec.name.title()}Record", spec.fields).model_validate_json(text).model_dump()
        )
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            field = ".".join(str(p) for p in err["loc"]) or "record"
            console.print(f"[red]{field}: {err['msg']}[/red]")
        raise typer.Exit(2) from None
    settings = cli_settings()
    predictor = scoring_predictor(service, version)
    why = ""
    try:
        background = load_reference(spec, settings, predictor.loaded.run_id, predictor.version).sample_frame(
            spec
        )
    except ReferenceUnavailable as exc:
        background, why = None, str(exc)
    try:
        body = explain_record(predictor, values, background, why)
    except ReferenceUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    print(json.dumps(body | {"model_version": predictor.version}, indent=2))
