"""The generated model card: data, metrics with intervals, candidates, intended use and limits."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec, ThresholdPolicy
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
    version, alias, best, threshold = outcome.version, outcome.alias, outcome.best, outcome.threshold
    cv, test, candidates, gate = outcome.cv, outcome.test, outcome.candidates, outcome.gate
    data_report, importance, params, fairness = (
        outcome.data_report,
        outcome.importance,
        outcome.params,
        outcome.fairness,
    )
    train_rows = outcome.train_rows or None
    final_fit_rows = outcome.final_fit_rows if outcome.refit_full else None
    refit_interval = outcome.refit_interval
    out = settings.resolved_models_dir / spec.name / "model_card.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Model card: {spec.title} (`{spec.name}` v{version})",
        "",
        f"Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `portfolio train {spec.name}`.",
        f"Registry alias after the gate: **{alias}** ({gate.get('reason', '')}).",
        "",
        "## Model",
        f"- Task: {spec.task}; chosen candidate: `{best}` (best mean cross-validated "
        f"{spec.primary_metric} of {len(candidates)} candidates).",
        f"- Hyper-parameters: `{params}`",
    ]
    split_rows = f" ({train_rows} rows)" if train_rows is not None else ""
    if final_fit_rows is not None:
        lines.append(
            f"- **Refit on all rows**: the registered artifact was refit on all {final_fit_rows} rows "
            "(training split + hold-out) after the evaluation, with the same candidate, "
            "hyper-parameters and "
            + (
                "threshold"
                if spec.task == "classification"
                else ("interval calibration below" if refit_interval else "interval quantiles")
            )
            + ". The cross-validation and hold-out figures, plots, importance and fairness below are "
            f"from the same setup fitted on the training split only{split_rows}; the registered "
            "model has seen the hold-out rows, so re-scoring it there would be in-sample."
        )
    else:
        lines.append(f"- Fitted on the training split{split_rows}; this is the registered artifact.")
    if threshold is not None:
        lines.append(
            f"- Decision threshold: **{threshold:.4f}**, chosen on out-of-fold predictions "
            f"({spec.threshold_policy.kind}"
            + _policy_note(spec.threshold_policy)
            + "), stored in the artifact and used by every prediction path."
        )
    if spec.task == "regression":
        lines.append(
            f"- Prediction interval: split-conformal {spec.interval_coverage:.0%} interval "
            "from out-of-fold log-ratio residuals (the figures below)."
        )
        if refit_interval is not None:
            level, q_low, q_high = refit_interval
            lines.append(
                f"- The registered (refit) model's interval is calibrated on the split model's hold-out "
                f"log-ratio residuals at {level:.0%} (the price times "
                f"[{math.exp(q_low):.3f}, {math.exp(q_high):.3f}]): "
                "refit on more rows, it is more accurate on new rows than the out-of-fold predictions "
                "that calibrate the split model, so the same level would cover more than intended "
                "(`refit_interval_coverage` in params.yaml says how the level was chosen)."
            )
    lines += [
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
    lines += [
        f"- Split: stratified hold-out {settings.test_size:.0%} (seed {settings.seed}); "
        f"{settings.cv_folds}-fold CV on the rest.",
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
    lines += ["", "## Champion gate"]
    if gate.get("champion_version") is not None:
        lines.append(
            f"New v{gate.get('new_version')}: {gate.get('metric')} {gate.get('new')} (hold-out of the "
            f"training-split fit) vs champion v{gate['champion_version']}: {gate.get('champion')} "
            f"({gate.get('champion_source', 're-evaluated on hold-out')})."
        )
        lines.append("")
    lines += [f"`{gate}`", "", "## Permutation importance (hold-out)", ""]
    for col, val in sorted(importance.items(), key=lambda kv: -kv[1]):
        lines.append(f"- {col}: {val:.4f}")
    if fairness is not None:
        from portfolio.core.training.fairness import fairness_markdown

        lines += ["", *fairness_markdown(fairness)]
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


def _policy_note(policy: ThresholdPolicy) -> str:
    """The threshold rule's targets, as the model card states them."""
    if policy.kind == "min_recall":
        return f", recall ≥ {policy.min_recall}"
    if policy.kind == "recall_precision":
        return (
            f": recall ≥ {policy.min_recall} and precision ≥ {policy.min_precision} both, the threshold "
            "whose smaller margin over its target, in binomial standard errors, is largest"
        )
    return ""
