"""Commands that score: predict (a file, locally or on Spark) and serve (the API)."""

from __future__ import annotations

import enum
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from portfolio.cli.common import (
    ServiceArg,
    cli_settings,
    console,
    out,
    require_service,
    scoring_predictor,
    service_spec,
)
from portfolio.core.settings import get_settings


class Engine(enum.StrEnum):
    local = "local"
    spark = "spark"


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
    predictor = scoring_predictor(service, version)
    settings = get_settings()
    plog = None
    run_id = f"batch-{uuid.uuid4().hex}"
    if log_predictions:
        plog = PredictionLog.from_settings(settings, predictor.spec.name)
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

    settings = cli_settings()
    spec = service_spec(service)
    registry.configure(settings)
    try:
        uri = registry.model_uri(spec.name, version)
    except registry.NoChampionError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None
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


def _exit_cleanly(signum: int, frame: Any) -> None:
    sys.exit(0)


def serve(
    service: ServiceArg,
    host: Annotated[str | None, typer.Option(help="Bind address (PORTFOLIO_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (PORTFOLIO_PORT).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (PORTFOLIO_WORKERS).")] = None,
) -> None:
    """Start the service's API (uvicorn)."""
    from portfolio.core.processes import keep_pyarrow_out

    keep_pyarrow_out()  # first: nothing has imported pandas yet (core/processes.py says why)
    import uvicorn

    from portfolio.core.logs import setup_logging, uvicorn_log_config
    from portfolio.core.serving.workers import reuse_port_supported, serve_workers

    settings = cli_settings()
    setup_logging(settings.log_level)  # a server's every line is JSON (log collectors parse them)
    require_service(service)  # the spec itself is imported by the app, in the worker
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
