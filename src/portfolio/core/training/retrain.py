"""Acting on live evidence: ``portfolio promote SERVICE --if-better`` and ``portfolio retrain
SERVICE --when drift|performance|always``.

``promote_if_better`` moves ``@champion`` to the ``@challenger`` only when the challenger wins on
the labelled records both versions scored (the shadow lines of the prediction log), by the champion
gate's own rule (``ServiceSpec.prefers``: its primary metric is not worse than the champion's on the
same rows). The challenger alias is then removed (it is the champion). Its ``code``:

- 0: promoted;
- 1: not promoted: the challenger is worse on those rows, or the metric cannot be computed there;
- 2: nothing to compare: no ``@champion`` or ``@challenger``, or no labelled record that both
  scored (shadow scoring off, or no labels yet).

``retrain`` reads its evidence, decides, trains (``train_service``: the gate then decides which
alias the new version gets) and logs the decision and its reason to MLflow: a ``<service>-retrain``
run in the service's experiment with the parameters (``when``, ``report``, ``since``,
``tolerance``), the tags ``retrain.decision`` (``skipped``, ``champion`` or ``challenger``),
``retrain.reason``, ``retrain.triggered`` and, when it trained, ``retrain.version`` and
``retrain.train_run_id`` (the training run gets ``retrain.when`` and ``retrain.reason`` too), and
the evidence as ``retrain.json``. Evidence by ``when``:

- ``always``: none needed;
- ``performance``: the performance report (``--report FILE`` or computed from the prediction log
  and labels now); retrain when the current champion's version is ``degraded`` there;
- ``drift``: the drift report (``--report FILE``, from ``portfolio drift``, or computed now from
  the inputs the prediction log holds for the current champion, at least ``Thresholds.min_rows``
  of them); retrain when ``drift_detected``.

No champion at all: it trains (the first model), whatever ``when`` says.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from portfolio.core import registry
from portfolio.core.monitoring import performance as perf
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec

log = logging.getLogger(__name__)

WHEN = ("drift", "performance", "always")
PROMOTED, NOT_PROMOTED, NOTHING_TO_COMPARE = 0, 1, 2


class RetrainInputError(ValueError):
    """Evidence that cannot be used (a report file missing, unreadable or of another service)."""


# ------------------------------------------------------------------------------ promote --if-better
@dataclass
class Promotion:
    """What ``promote_if_better`` decided and why."""

    code: int
    promoted: bool
    reason: str
    champion_version: str | None = None
    challenger_version: str | None = None
    comparison: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def promote_if_better(
    spec: ServiceSpec,
    settings: Settings,
    *,
    since: datetime | None = None,
    rounds: int | None = None,
) -> Promotion:
    """Promote ``@challenger`` when it wins on the labelled rows both versions scored.

    Args:
        spec: The service.
        settings: The registry, the prediction log folder, bootstrap rounds and seed.
        since: Only records predicted at or after this time.
        rounds: Bootstrap resamples (default: ``settings.bootstrap_rounds``).

    Returns:
        The decision (``code`` as in the module docstring).
    """
    registry.configure(settings)
    champ = registry.champion_version(spec.name)
    chal = registry.alias_version(spec.name, registry.CHALLENGER)
    if champ is None or chal is None:
        missing = "@champion" if champ is None else "@challenger"
        return Promotion(NOTHING_TO_COMPARE, False, f"{spec.name}: no {missing} registered")
    a, b = str(champ.version), str(chal.version)
    if a == b:
        return Promotion(NOTHING_TO_COMPARE, False, f"@challenger is the champion (v{a})", a, b)
    rows = perf.joined_rows(settings.resolved_prediction_log_dir, spec.name, since, shadow=None)
    pairs = perf.paired_rows(rows).get((a, b))
    if not pairs:
        return Promotion(
            NOTHING_TO_COMPARE,
            False,
            f"no labelled record was answered by champion v{a} and shadow-scored by challenger v{b} "
            "(serve with PORTFOLIO_SHADOW=true, then `portfolio feedback`)",
            a,
            b,
        )
    comp = perf.compare_on_same_rows(
        spec, pairs, rounds if rounds is not None else settings.bootstrap_rounds, settings.seed
    )
    if not comp["challenger_wins"]:
        return Promotion(NOT_PROMOTED, False, f"kept champion v{a}: {comp['reason']}", a, b, comp)
    from mlflow.tracking import MlflowClient

    registry.set_alias(spec.name, registry.CHAMPION, b)
    registry.delete_alias(spec.name, registry.CHALLENGER)
    MlflowClient().set_model_version_tag(
        spec.name, b, "promoted_by", f"promote --if-better: {comp['reason']}"
    )
    log.info("%s: champion v%s → v%s (%s)", spec.name, a, b, comp["reason"])
    return Promotion(PROMOTED, True, f"promoted v{b}: {comp['reason']}", a, b, comp)


# ------------------------------------------------------------------------------------------ retrain
@dataclass
class Evidence:
    """Whether the evidence asks for training, why, and the report it came from."""

    triggered: bool
    reason: str
    report: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_report(path: Path, service: str) -> dict[str, Any]:
    """A drift or performance report written by the CLI (``--output``).

    Args:
        path: The JSON file.
        service: The service it must describe.

    Returns:
        The report. Raises RetrainInputError when missing, unreadable or of another service.
    """
    if not path.exists():
        raise RetrainInputError(f"--report: file not found: {path}")
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RetrainInputError(f"--report: {path} is not a JSON report ({exc})") from None
    if not isinstance(report, dict) or report.get("service") != service:
        found = report.get("service") if isinstance(report, dict) else None
        raise RetrainInputError(f"--report: {path} is not a {service} report (service: {found!r})")
    return report


def performance_evidence(
    spec: ServiceSpec,
    settings: Settings,
    champion: str,
    report: dict[str, Any] | None,
    since: datetime | None,
    tolerance: float,
) -> Evidence:
    """Retrain when the current champion's version is ``degraded`` in the performance report.

    Args:
        spec: The service.
        settings: The prediction log folder, bootstrap rounds and seed.
        champion: The current champion's version.
        report: A report read from a file, or None to compute it now from the log and labels.
        since: Only predictions from this time on (when computed).
        tolerance: The ``degraded`` rule's tolerance (when computed).

    Returns:
        The evidence.
    """
    if report is None:
        log_dir = settings.resolved_prediction_log_dir
        try:
            report = perf.performance_report(
                spec,
                log_dir,
                since=since,
                rounds=settings.bootstrap_rounds,
                seed=settings.seed,
                tolerance=tolerance,
            )
        except ValueError as exc:
            return Evidence(False, f"no performance evidence: {exc}")
        perf.save_latest(report, log_dir)
    if "versions" not in report:
        raise RetrainInputError("--report: not a performance report (no `versions`)")
    mine = report["versions"].get(champion)
    if mine is None:
        seen = ", ".join(f"v{v}" for v in report["versions"]) or "none"
        return Evidence(
            False, f"no labelled predictions of champion v{champion} (the report has {seen})", report
        )
    verdict = "degraded" if mine["degraded"] else "not degraded"
    return Evidence(
        bool(mine["degraded"]),
        f"champion v{champion} {verdict} on {mine['rows']} labelled predictions: {mine['degraded_reason']}",
        report,
    )


def drift_evidence(
    spec: ServiceSpec,
    settings: Settings,
    champion: str,
    report: dict[str, Any] | None,
    since: datetime | None,
) -> Evidence:
    """Retrain when the drift report finds drift.

    Args:
        spec: The service.
        settings: The registry and the prediction log folder.
        champion: The current champion's version.
        report: A report read from a file, or None to compute it now from the inputs the
            prediction log holds for the champion's version.
        since: Only records predicted from this time on (when computed).

    Returns:
        The evidence.
    """
    if report is None:
        report = drift_from_log(spec, settings, champion, since)
        if report is None:
            return Evidence(False, f"too few logged records of champion v{champion} to judge drift")
    if "drift_detected" not in report:
        raise RetrainInputError("--report: not a drift report (no `drift_detected`)")
    rows = (report.get("current") or {}).get("rows")
    drifted = report.get("drifted_features") or []
    if report["drift_detected"]:
        return Evidence(
            True, f"drift in {len(drifted)} feature(s) ({', '.join(drifted)}) over {rows} rows", report
        )
    return Evidence(False, f"no drift over {rows} rows", report)


def drift_from_log(
    spec: ServiceSpec, settings: Settings, champion: str, since: datetime | None
) -> dict[str, Any] | None:
    """The drift report of the inputs the champion's version answered (prediction log) against its
    training reference; None with fewer than ``Thresholds.min_rows`` records."""
    import pandas as pd

    from portfolio.core.monitoring.drift import Thresholds, drift_report
    from portfolio.core.monitoring.predictions import read_log
    from portfolio.core.monitoring.reference import load_reference, typed_frame

    cutoff = since.isoformat() if since is not None else ""
    inputs = [
        r["inputs"]
        for r in read_log(settings.resolved_prediction_log_dir, spec.name)
        if not r.get("shadow", False) and str(r["model_version"]) == champion and r["ts"] >= cutoff
    ]
    if len(inputs) < Thresholds().min_rows:
        return None
    from mlflow.tracking import MlflowClient

    current = typed_frame(pd.DataFrame(inputs, columns=spec.feature_names), spec.fields)
    mv = MlflowClient().get_model_version(spec.name, champion)
    reference = load_reference(spec, settings, mv.run_id, champion)
    report = drift_report(spec, reference, current)
    report["model_version"] = champion
    report["current"]["source"] = "prediction log" + (f" since {cutoff}" if cutoff else "")
    return report


def retrain(
    spec: ServiceSpec,
    settings: Settings,
    when: str,
    *,
    report_path: Path | None = None,
    since: datetime | None = None,
    tolerance: float = 0.05,
) -> dict[str, Any]:
    """``portfolio retrain``: read the evidence, train when it asks for it (the gate then decides
    the new version's alias), and log the decision and its reason to MLflow.

    Args:
        spec: The service.
        settings: Everything training and the prediction log need.
        when: ``drift``, ``performance`` or ``always``.
        report_path: A drift or performance report to read instead of computing one now.
        since: Only predictions from this time on (computed evidence).
        tolerance: The ``degraded`` rule's tolerance (computed performance evidence).

    Returns:
        The decision: ``decision`` (``skipped``, ``champion``, ``challenger``), ``reason``,
        ``triggered``, the training outcome's version and gate when it trained, and the MLflow
        run that records it.
    """
    import mlflow

    from portfolio.core.training.train import train_service

    if when not in WHEN:
        raise RetrainInputError(f"--when: one of {', '.join(WHEN)}, not {when!r}")
    registry.configure(settings)
    report = read_report(report_path, spec.name) if report_path is not None else None
    champ = registry.champion_version(spec.name)
    if champ is None:
        evidence = Evidence(True, "no champion registered yet")
    elif when == "always":
        evidence = Evidence(True, "--when always")
    elif when == "performance":
        evidence = performance_evidence(spec, settings, str(champ.version), report, since, tolerance)
    else:
        evidence = drift_evidence(spec, settings, str(champ.version), report, since)
    result: dict[str, Any] = {
        "service": spec.name,
        "when": when,
        "champion_before": None if champ is None else str(champ.version),
        "triggered": evidence.triggered,
        "evidence": evidence.reason,
    }
    if evidence.triggered:
        outcome = train_service(spec, settings)
        result |= {
            "decision": outcome.alias,
            "version": outcome.version,
            "train_run_id": outcome.run_id,
            "gate": outcome.gate,
            "reason": f"{evidence.reason}; trained v{outcome.version}, gate: {outcome.gate['reason']} "
            f"→ @{outcome.alias}",
        }
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        client.set_tag(outcome.run_id, "retrain.when", when)
        client.set_tag(outcome.run_id, "retrain.reason", evidence.reason[:5000])
    else:
        result |= {"decision": "skipped", "reason": f"not retrained: {evidence.reason}"}
    experiment_id = registry.ensure_experiment(spec.name, settings)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{spec.name}-retrain") as run:
        mlflow.log_params(
            {
                "when": when,
                "report": str(report_path) if report_path else "computed",
                "since": since.isoformat() if since else "",
                "tolerance": tolerance,
            }
        )
        tags = {
            "service": spec.name,
            "retrain.decision": result["decision"],
            "retrain.reason": result["reason"][:5000],  # MLflow's tag value limit
            "retrain.triggered": str(evidence.triggered).lower(),
        }
        if evidence.triggered:
            tags |= {"retrain.version": result["version"], "retrain.train_run_id": result["train_run_id"]}
        mlflow.set_tags(tags)
        mlflow.log_dict({**result, "report": evidence.report}, "retrain.json")
        result["run_id"] = run.info.run_id
    return result
