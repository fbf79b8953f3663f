"""The generated model card: data, metrics with intervals, candidates, intended use and limits."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec
from portfolio.core.training.outcome import TrainOutcome


def _fmt(stats: dict[str, float]) -> str:
    return f"{stats['value']:.4f} [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}]"


def write_model_card(spec: ServiceSpec, settings: Settings, outcome: TrainOutcome) -> Path:
    """Write ``models/<service>/model_card.md`` from a training run's outcome.

    With ``refit_full`` the registered artifact was refit on all rows after the evaluation, and
    every figure in the card is from the training-split fit; ``outcome.refit_interval`` is set
    when the refit model's interval was calibrated on the hold-out.

    Args:
        spec: The service.
        settings: Where model cards go; the split and CV settings they quote.
        outcome: The training run's outcome.

    Returns:
        The card's path.
    """
    out = settings.resolved_models_dir / spec.name / "model_card.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        *_model_section(spec, outcome),
        *_data_section(settings, outcome.data_report),
        *_metrics_section(outcome),
        *_gate_section(outcome),
    ]
    if outcome.fairness is not None:
        from portfolio.core.training.fairness import fairness_markdown

        lines += ["", *fairness_markdown(outcome.fairness)]
    lines += [
        "",
        "## Intended use",
        spec.intended_use or "-",
        "",
        "## Limitations",
        spec.limitations or "-",
        "",
    ]
    out.write_text("\n".join(lines))
    return out


def _model_section(spec: ServiceSpec, outcome: TrainOutcome) -> list[str]:
    """Title, the chosen candidate, how the registered artifact was fitted and its decision rule."""
    task = spec.strategy
    lines = [
        f"# Model card: {spec.title} (`{spec.name}` v{outcome.version})",
        "",
        f"Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `portfolio train {spec.name}`.",
        f"Registry alias after the gate: **{outcome.alias}** ({outcome.gate.get('reason', '')}).",
        "",
        "## Model",
        f"- Task: {spec.task}; chosen candidate: `{outcome.best}` (best mean cross-validated "
        f"{spec.primary_metric} of {len(outcome.candidates)} candidates).",
        f"- Hyper-parameters: `{outcome.params}`",
    ]
    train_rows = outcome.train_rows or None
    split_rows = f" ({train_rows} rows)" if train_rows is not None else ""
    if outcome.refit_full:
        lines.append(
            "- **Refit on all rows**: the registered artifact was refit on all "
            f"{outcome.final_fit_rows} rows (training split + hold-out) after the evaluation, "
            "with the same candidate, hyper-parameters and "
            + task.card_refit_rule(outcome.refit_interval)
            + ". The cross-validation and hold-out figures, plots, importance and fairness below are "
            f"from the same setup fitted on the training split only{split_rows}; the registered "
            "model has seen the hold-out rows, so re-scoring it there would be in-sample."
        )
    else:
        lines.append(f"- Fitted on the training split{split_rows}; this is the registered artifact.")
    return lines + task.card_rule_lines(spec, outcome.threshold, outcome.refit_interval)


def _data_section(settings: Settings, data_report: dict[str, Any]) -> list[str]:
    """The data file, the rows it lost and why, and the split."""
    lines = [
        "",
        "## Data",
        f"- File `{data_report['file']}` (md5 `{data_report['md5']}`), "
        f"{data_report['rows_in_file']} rows; {data_report['rows_used']} used.",
        f"- Rows failing the schema: {data_report['schema']['invalid_rows']} "
        f"{data_report['schema']['by_reason'] or ''}; unusable target: "
        f"{data_report['target_invalid_rows']}.",
    ]
    if data_report.get("cleaning"):
        lines.append(
            f"- Training-only cleaning rules excluded: {data_report['cleaning']['excluded_by_rule']}"
        )
    return [
        *lines,
        f"- Split: stratified hold-out {settings.test_size:.0%} (seed {settings.seed}); "
        f"{settings.cv_folds}-fold CV on the rest.",
    ]


def _metrics_section(outcome: TrainOutcome) -> list[str]:
    """Cross-validation and hold-out metrics, and every candidate's CV figures."""
    cv, test, candidates = outcome.cv, outcome.test, outcome.candidates
    lines = [
        "",
        "## Metrics (95% bootstrap intervals)",
        "| metric | cross-validation (out-of-fold) | hold-out |",
        "|---|---|---|",
    ]
    for name in cv:
        lines.append(f"| {name} | {_fmt(cv[name])} | {_fmt(test[name]) if name in test else ''} |")
    lines += ["", "## Candidates (cross-validation)", ""]
    cols = sorted({k for v in candidates.values() for k in v})
    lines.append("| candidate | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for name, vals in candidates.items():
        lines.append(f"| {name} | " + " | ".join(f"{vals.get(c, float('nan')):.4f}" for c in cols) + " |")
    return lines


def _gate_section(outcome: TrainOutcome) -> list[str]:
    """The champion gate's decision and the permutation importance."""
    gate = outcome.gate
    lines = ["", "## Champion gate"]
    if gate.get("champion_version") is not None:
        lines.append(
            f"New v{gate.get('new_version')}: {gate.get('metric')} {gate.get('new')} (hold-out of the "
            f"training-split fit) vs champion v{gate['champion_version']}: {gate.get('champion')} "
            f"({gate.get('champion_source', 're-evaluated on hold-out')})."
        )
        lines.append("")
    lines += [f"`{gate}`", "", "## Permutation importance (hold-out)", ""]
    for col, val in sorted(outcome.importance.items(), key=lambda kv: -kv[1]):
        lines.append(f"- {col}: {val:.4f}")
    return lines
