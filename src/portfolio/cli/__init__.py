"""`portfolio`: train, predict, evaluate, learning-curve, cv, serve, promote, retrain, validate, drift,
feedback, performance, models, dashboard, up."""

from __future__ import annotations

import logging

import typer

from portfolio.cli import closed_loop, monitoring, predicting, registry, stack, training

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

# Registration order is the order `portfolio --help` lists the commands in.
app.command()(training.train)
app.command()(predicting.predict)
app.command()(training.evaluate)
app.command("learning-curve")(training.learning_curve_cmd)
app.command("cv")(training.cv_cmd)
app.command()(training.validate)
app.command()(monitoring.drift)
app.command()(monitoring.feedback)
app.command()(monitoring.performance)
app.command()(monitoring.explain)
app.command()(registry.promote)
app.command()(closed_loop.retrain)
app.command()(registry.models)
app.command()(predicting.serve)
app.command()(stack.dashboard)
app.command()(stack.up)


def main() -> None:
    """The `portfolio` console entry point."""
    logging.captureWarnings(True)
    app()


if __name__ == "__main__":
    main()
