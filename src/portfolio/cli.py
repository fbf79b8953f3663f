"""`portfolio`: train, predict, evaluate, learning-curve, cv, serve, promote, validate, drift, models,
dashboard, up."""

from __future__ import annotations

import enum
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from portfolio.core.settings import Settings, get_settings
from portfolio.services import SERVICES, get_spec

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

ServiceArg = Annotated[str, typer.Argument(help=f"Service: {', '.join(SERVICES)}")]


def _settings() -> Settings:
    from portfolio.core.logs import setup_logging

    s = get_settings()
    setup_logging(s.log_level, json_logs=False)
    return s


def _spec(name: str) -> Any:
    try:
        return get_spec(name)
    except KeyError as exc:
        console.print(f"[red]{exc.args[0]}[/red]")
        raise typer.Exit(2) from None


def _write_text(path: Path, text: str) -> None:
    """An output file of a command (its folder created when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


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


@app.command()
def train(
    service: ServiceArg,
    summary_json: Annotated[
        Path | None, typer.Option(help="Also write the summary here (DVC metrics).")
    ] = None,
) -> None:
    """Cross-validate, fit, evaluate, log to MLflow, register and gate (`all` trains every service)."""
    from portfolio.core.training.train import train_service

    settings = _settings()
    names = list(SERVICES) if service == "all" else [service]
    summaries = []
    for name in names:
        spec = _spec(name)
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
        _write_text(summary_json, json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))


class Engine(enum.StrEnum):
    local = "local"
    spark = "spark"


def _predictor(service: str, version: str | None) -> Any:
    from portfolio.core import registry
    from portfolio.core.serving.inference import load_predictor

    settings = _settings()
    spec = _spec(service)
    try:
        return load_predictor(spec, settings, version or None)
    except registry.NoChampionError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None


@app.command()
def predict(
    service: ServiceArg,
    input: Annotated[Path, typer.Argument(help="CSV with the dataset's raw columns.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write predictions.")],
    version: Annotated[str | None, typer.Option(help="Registered version (default: champion).")] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain/--no-explain",
            help="Per-row explanations where the service gives them (TelecomAI's top_factors); "
            "--no-explain leaves that column empty and scores about 20 times fewer model rows.",
        ),
    ] = True,
    log_predictions: Annotated[
        bool,
        typer.Option(
            "--log-predictions",
            help="Also write each valid row to the prediction log (PORTFOLIO_PREDICTION_LOG_DIR) "
            "as <run id>:<row>, the run id printed at the end.",
        ),
    ] = False,
    engine: Annotated[
        Engine,
        typer.Option(
            help="local: this process, CSV to CSV. spark: the registered pyfunc via "
            "mlflow.pyfunc.spark_udf, CSV or Parquet in, a Spark output folder out (Parquet "
            "when OUTPUT ends with .parquet).",
        ),
    ] = Engine.local,
    spark_master: Annotated[
        str | None,
        typer.Option(help="Spark master when not under spark-submit (default local[*])."),
    ] = None,
) -> None:
    """Batch-score a CSV: one output row per input row, same order; invalid rows get `error`."""
    import uuid

    from portfolio.core.monitoring.predictions import PredictionLog
    from portfolio.core.serving.batch import InputFileError, predict_csv

    if not input.exists():
        console.print(f"[red]input file not found: {input}[/red]")
        raise typer.Exit(2)
    if engine is Engine.spark:
        if log_predictions:
            console.print("[red]--log-predictions: only with --engine local[/red]")
            raise typer.Exit(2)
        _predict_spark(service, input, output, version, explain, spark_master)
        return
    predictor = _predictor(service, version)
    settings = get_settings()
    plog = None
    run_id = f"batch-{uuid.uuid4().hex}"
    if log_predictions:
        plog = PredictionLog(
            settings.resolved_prediction_log_dir,
            predictor.spec.name,
            sample=settings.prediction_log_sample,
            max_bytes=settings.prediction_log_max_bytes,
            queue_size=settings.prediction_log_queue,
        )
    with Progress(
        TextColumn("scoring"),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("rows", total=None)
        started = time.perf_counter()
        try:
            report = predict_csv(
                predictor,
                input,
                output,
                settings.batch_chunk_rows,
                on_chunk=lambda n: progress.advance(task, n),
                explain=explain,
                prediction_log=plog,
                run_id=run_id,
            )
        except InputFileError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
        finally:
            if plog is not None:
                plog.close()
    seconds = time.perf_counter() - started  # reading, validating, scoring and writing
    out.print(
        f"{report.rows} rows scored with {service} v{predictor.version}: "
        f"{report.ok} ok, {report.failed} failed validation → {output} "
        f"in {seconds:.2f} s ({report.rows / max(seconds, 1e-9):,.0f} rows/s)"
    )
    if plog is not None:
        out.print(f"logged as {run_id}:<row> → {plog.folder}")
    if report.failed:
        t = Table(title="validation failures")
        t.add_column("reason")
        t.add_column("rows", justify="right")
        for reason, n in list(report.reasons.items())[:10]:
            t.add_row(reason, str(n))
        out.print(t)


def _predict_spark(
    service: str, input: Path, output: Path, version: str | None, explain: bool, master: str | None
) -> None:
    from portfolio.core import registry
    from portfolio.core.serving import spark_batch

    settings = _settings()
    spec = _spec(service)
    registry.configure(settings)
    mv = registry.champion_version(spec.name) if version is None else None
    if version is None and mv is None:
        console.print(
            f"[red]no champion registered for {spec.name!r}: run `portfolio train {spec.name}`[/red]"
        )
        raise typer.Exit(3)
    uri = f"models:/{spec.name}/{version}" if version else f"models:/{spec.name}@{registry.CHAMPION}"
    started = time.perf_counter()
    spark = spark_batch.session(master)
    try:
        report = spark_batch.predict_spark(spark, spec, uri, str(input), str(output), explain)
    except ValueError as exc:
        console.print(f"[red]{input}: {exc}[/red]")
        raise typer.Exit(2) from None
    seconds = time.perf_counter() - started
    out.print(
        f"{report.rows} rows scored on Spark with {uri}: {report.rows - report.failed} ok, "
        f"{report.failed} failed validation → {output} in {seconds:.2f} s "
        f"({report.rows / max(seconds, 1e-9):,.0f} rows/s)"
    )


@app.command()
def evaluate(
    service: ServiceArg,
    labeled: Annotated[Path | None, typer.Argument(help="Labeled CSV (raw columns + target).")] = None,
    holdout: Annotated[bool, typer.Option(help="Evaluate on the training hold-out split instead.")] = False,
    version: Annotated[str | None, typer.Option(help="Registered version (default: champion).")] = None,
    output: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
) -> None:
    """Metrics (with 95% bootstrap intervals) of the champion on labeled data, printed as JSON."""
    from portfolio.core.data import DataUnavailableError, load_training_data
    from portfolio.core.training.train import evaluate_model, split

    predictor = _predictor(service, version)
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
    if holdout:
        _, X, _, y = split(spec, ds, settings)
    else:
        X, y = ds.X, ds.y
    metrics = evaluate_model(spec, predictor.model, X, y.to_numpy(), settings)
    result = {
        "service": spec.name,
        "version": predictor.version,
        "data": "hold-out split" if holdout else str(labeled),
        "rows_evaluated": len(X),
        "rows_excluded": ds.report()["rows_in_file"] - ds.report()["rows_used"],
        "exclusions": ds.report()["schema"]["by_reason"],
        "threshold": predictor.threshold,
        "metrics": metrics,
    }
    note = _refit_holdout_note(spec, predictor.version) if holdout else None
    if note:
        # A refit version has seen the hold-out: `metrics` (what `dvc metrics show` and
        # `dvc metrics diff` read) are the hold-out figures its training run logged for the
        # same setup fitted on the training split; the re-scored ones are kept apart.
        from portfolio.core.training.evaluation import unflatten

        # The loaded model carries its training run's metrics (also offline, from the cache).
        logged = unflatten("test", predictor.loaded.metrics)
        if logged:
            result["metrics"] = logged
            result["metrics_source"] = "logged hold-out metrics of the training-split fit"
            result["in_sample_metrics"] = metrics
            result["note"] = note
        else:  # the training run is not reachable: keep the re-score, flagged as in-sample
            result["note"] = (
                f"v{predictor.version} was refit on all rows: these hold-out figures are in-sample."
            )
    text = json.dumps(result, indent=2)
    if output:
        _write_text(output, text)
    print(text)


def _champion_candidate(service: str, settings: Settings) -> str | None:
    """The candidate the champion was trained as (its training run's ``model`` param)."""
    from mlflow.tracking import MlflowClient

    from portfolio.core import registry

    registry.configure(settings)
    try:
        mv = registry.champion_version(service)
        return MlflowClient().get_run(mv.run_id).data.params.get("model") if mv and mv.run_id else None
    except Exception:
        return None


@app.command("learning-curve")
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
    from portfolio.core.training.learning_curve import learning_curve
    from portfolio.core.training.train import load_params

    settings = _settings()
    spec = _spec(service)
    try:
        fracs = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        console.print(f"[red]--fractions: not a list of numbers: {fractions!r}[/red]")
        raise typer.Exit(2) from None
    name = candidate or _champion_candidate(spec.name, settings)
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
        _write_text(output, json.dumps(curve.summary(), indent=2))


@app.command("cv")
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
    from portfolio.core.training.cv import repeated_cv, to_markdown
    from portfolio.core.training.train import load_params

    settings = _settings()
    specs = [get_spec(n) for n in SERVICES] if service == "all" else [_spec(service)]
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
        best = max(
            estimates,
            key=lambda e: e.mean(spec.primary_metric) * (1 if spec.primary_higher_is_better else -1),
        )
        out.print(
            f"{spec.title}: {best.rows:,} rows, {best.repeats} x {best.folds}-fold CV; "
            f"best by mean {spec.primary_metric}: {best.candidate}\n"
        )
        out.print(to_markdown(estimates))
        results[spec.name] = {"chosen": best.candidate, "candidates": [e.summary() for e in estimates]}
    if output:
        _write_text(output, json.dumps(results, indent=2))


def _refit_holdout_note(spec: Any, version: str) -> str | None:
    """A version refit on all rows has seen the hold-out: say so, with its honest figure."""
    from portfolio.core import registry

    try:
        tags = registry.version_tags(spec.name, version)
    except Exception:  # e.g. serving the cached champion: nothing to add
        return None
    if not registry.is_refit(tags):
        return None
    metric = spec.primary_metric
    return (
        f"v{version} was refit on all rows after its evaluation, hold-out included, so re-scoring it "
        "there is in-sample (`in_sample_metrics`). `metrics` are the hold-out figures its training "
        f"run logged for the same setup fitted on the training split only ({metric} "
        f"{tags.get(registry.holdout_tag(metric), 'not recorded')})."
    )


@app.command()
def validate(
    service: ServiceArg,
    file: Annotated[Path | None, typer.Argument(help="CSV to check (default: the raw data).")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """Validate a data file against the service's schema; report bad rows by reason."""
    from portfolio.core.data import load_training_data

    settings = _settings()
    spec = _spec(service)
    ds = load_training_data(spec, settings, file)
    report = ds.report()
    text = json.dumps(report, indent=2, default=str)
    if output:
        _write_text(output, text)
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


@app.command()
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

    settings = _settings()
    spec = _spec(service)
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
    _write_text(output, json.dumps(report, indent=2))
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


@app.command()
def feedback(
    service: ServiceArg,
    labels: Annotated[
        Path, typer.Argument(help="CSV with columns request_id,label (the raw target's form).")
    ],
) -> None:
    """Join true outcomes to the logged predictions by request id (PORTFOLIO_PREDICTION_LOG_DIR).
    Unknown ids, duplicate ids (the last wins) and invalid rows are counted and reported."""
    from portfolio.core.monitoring.feedback import FeedbackInputError, record_feedback

    settings = _settings()
    spec = _spec(service)
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


@app.command()
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
    beside their hold-out figures, with `degraded`; JSON + HTML, and the API's /metrics."""
    from datetime import UTC, datetime

    from portfolio.core import registry
    from portfolio.core.monitoring.performance import performance_report, save_latest, write_html

    settings = _settings()
    spec = _spec(service)
    start = None
    if since:
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            console.print(f"[red]--since: not an ISO 8601 date/time: {since!r}[/red]")
            raise typer.Exit(2) from None
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
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
    _write_text(output, json.dumps(report, indent=2))
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


@app.command()
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

    spec = _spec(service)
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
    settings = _settings()
    predictor = _predictor(service, version)
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


@app.command()
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
    live labelled traffic. Says why either way."""
    from portfolio.core import registry

    settings = _settings()
    spec = _spec(service)
    registry.configure(settings)
    if if_better == (version is not None):
        console.print("[red]give VERSION or --if-better (one of them)[/red]")
        raise typer.Exit(2)
    if if_better:
        from portfolio.core.training.retrain import promote_if_better

        decision = promote_if_better(spec, settings, since=_since(since))
        print(json.dumps(decision.to_dict(), indent=2))
        colour = "green" if decision.promoted else "yellow"
        console.print(f"[{colour}]{spec.name}: {decision.reason}[/{colour}]")
        raise typer.Exit(decision.code)
    try:
        mv = registry.promote(spec.name, version)  # type: ignore[arg-type]
    except Exception as exc:
        console.print(f"[red]cannot promote {spec.name} v{version}: {exc}[/red]")
        raise typer.Exit(2) from None
    out.print(f"{spec.name}: champion → v{mv.version}")


def _since(value: str | None) -> Any:
    """``--since``: an ISO 8601 date/time (UTC when no zone is given); bad text exits with code 2."""
    from datetime import UTC, datetime

    if not value:
        return None
    try:
        start = datetime.fromisoformat(value)
    except ValueError:
        console.print(f"[red]--since: not an ISO 8601 date/time: {value!r}[/red]")
        raise typer.Exit(2) from None
    return start if start.tzinfo else start.replace(tzinfo=UTC)


class When(enum.StrEnum):
    drift = "drift"
    performance = "performance"
    always = "always"


@app.command()
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
            help="A drift or performance report (JSON) to read; default: computed now from "
            "the prediction log (and labels)."
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Computed evidence: predictions from this date/time on.")
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="`degraded` rule's tolerance (computed performance).")
    ] = 0.05,
) -> None:
    """Read the evidence, train when it asks for it (the gate decides the new version's alias) and
    log the decision and its reason to MLflow (tags retrain.*). Exit 0 whatever was decided; 2 on
    bad input (a report missing, unreadable or of another service)."""
    from portfolio.core.training.retrain import RetrainInputError
    from portfolio.core.training.retrain import retrain as run_retrain

    settings = _settings()
    names = list(SERVICES) if service == "all" else [_spec(service).name]
    if report is not None and len(names) > 1:
        console.print("[red]--report: a report is of one service; name it instead of `all`[/red]")
        raise typer.Exit(2)
    start = _since(since)
    for name in names:
        try:
            result = run_retrain(
                _spec(name), settings, when.value, report_path=report, since=start, tolerance=tolerance
            )
        except RetrainInputError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
        print(json.dumps(result, indent=2, default=str))
        console.print(f"{name}: {result['decision']}: {result['reason']} (MLflow run {result['run_id']})")


@app.command()
def models(service: Annotated[str | None, typer.Argument(help="One service (default: all).")] = None) -> None:
    """List registered versions with their aliases and hold-out metrics."""
    from mlflow.tracking import MlflowClient

    from portfolio.core import registry

    settings = _settings()
    registry.configure(settings)
    client = MlflowClient()
    for name in [service] if service else list(SERVICES):
        spec = _spec(name)
        t = Table(title=spec.title)
        for col in ("version", "aliases", f"test_{spec.primary_metric}", "created"):
            t.add_column(col)
        try:
            versions = list(client.search_model_versions(f"name='{name}'"))
            # The registered model holds the aliases (search results leave them out).
            aliases = client.get_registered_model(name).aliases
        except Exception:
            versions, aliases = [], {}
        for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
            run = client.get_run(mv.run_id) if mv.run_id else None
            val = run.data.metrics.get(f"test_{spec.primary_metric}") if run else None
            t.add_row(
                str(mv.version),
                ",".join(sorted(a for a, v in aliases.items() if str(v) == str(mv.version))),
                "" if val is None else f"{val:.4f}",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(mv.creation_timestamp / 1000)),
            )
        out.print(t)


def _exit_cleanly(signum: int, frame: Any) -> None:
    sys.exit(0)


@app.command()
def serve(
    service: ServiceArg,
    host: Annotated[str | None, typer.Option(help="Bind address (PORTFOLIO_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (PORTFOLIO_PORT).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (PORTFOLIO_WORKERS).")] = None,
) -> None:
    """Start the service's API (uvicorn)."""
    import uvicorn

    from portfolio.core.logs import setup_logging, uvicorn_log_config
    from portfolio.core.serving.workers import reuse_port_supported, serve_workers

    settings = _settings()
    setup_logging(settings.log_level)  # a server's every line is JSON (log collectors parse them)
    _spec(service)
    os.environ["PORTFOLIO_SERVICE"] = service
    config: dict[str, Any] = {
        "app": "portfolio.app:app_from_env",
        "factory": True,
        "host": host or settings.host,
        "port": port or settings.port,
        "log_level": settings.log_level.lower(),
        "log_config": uvicorn_log_config(settings.log_level),
        "access_log": False,
        "timeout_graceful_shutdown": 10,
    }
    n = workers or settings.workers
    if n > 1 and reuse_port_supported():
        # A listening socket per worker, so keep-alive clients spread over the workers
        # (core/serving/workers.py says why uvicorn's shared socket does not).
        sys.exit(serve_workers(config, n))
    # uvicorn answers SIGTERM/SIGINT with a graceful shutdown (in-flight requests complete), then
    # re-raises the signal to the handler it found: make that a clean exit (0), not death by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    uvicorn.run(**config, workers=n)


@app.command()
def dashboard(
    host: Annotated[str | None, typer.Option(help="Bind address (PORTFOLIO_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (PORTFOLIO_DASHBOARD_PORT).")] = None,
) -> None:
    """Start the CarVision Market Intelligence dashboard (Streamlit). Set CARVISION_API_URL to
    predict through a running CarVision API instead of the local champion."""
    from portfolio.carvision.dashboard import streamlit_argv

    settings = _settings()
    argv = streamlit_argv(host or settings.host, port or settings.dashboard_port)
    sys.stdout.flush()
    sys.stderr.flush()
    # Become Streamlit (exec, no shell, fixed argument list): signals such as a container's SIGTERM
    # reach the server itself, and its exit code is ours.
    os.execvp(argv[0], argv)  # nosec B606


@app.command()
def up(
    services: Annotated[str, typer.Option(help="Comma-separated services to run.")] = ",".join(SERVICES),
) -> None:
    """Train any service without a champion, start a real MLflow server and the APIs; Ctrl-C stops all."""
    from portfolio.stack import run_stack

    settings = _settings()
    names = [s.strip() for s in services.split(",") if s.strip()]
    for n in names:
        _spec(n)
    sys.exit(run_stack(settings, names, console=out))


def main() -> None:
    logging.captureWarnings(True)
    app()


if __name__ == "__main__":
    main()
