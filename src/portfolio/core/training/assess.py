"""`portfolio evaluate`'s rules: a registered version's metrics on labelled rows or the hold-out,
and what to report instead when the version was refit on all rows and has seen the hold-out."""

from __future__ import annotations

from typing import Any

from portfolio.core import registry
from portfolio.core.data import Dataset
from portfolio.core.serving.inference import Predictor
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec
from portfolio.core.training.evaluation import unflatten
from portfolio.core.training.train import evaluate_model, split


def assess_version(
    predictor: Predictor, settings: Settings, ds: Dataset, holdout: bool, data: str
) -> dict[str, Any]:
    """Metrics (95% bootstrap intervals) of a loaded version on a labelled data set.

    Args:
        predictor: The version to assess.
        settings: Bootstrap rounds, seed and the split settings.
        ds: The validated labelled rows.
        holdout: Score only the training hold-out split of ``ds`` (the service's raw data).
        data: What ``ds`` is, as the result names it.

    Returns:
        The result as `portfolio evaluate` prints it. For a version refit on all rows, assessed
        on the hold-out, ``metrics`` are the hold-out figures its training run logged and the
        re-scored ones are ``in_sample_metrics``.
    """
    spec = predictor.spec
    if holdout:
        _, X, _, y = split(spec, ds, settings)
    else:
        X, y = ds.X, ds.y
    metrics = evaluate_model(spec, predictor.model, X, y.to_numpy(), settings)
    report = ds.report()
    result: dict[str, Any] = {
        "service": spec.name,
        "version": predictor.version,
        "data": data,
        "rows_evaluated": len(X),
        "rows_excluded": report["rows_in_file"] - report["rows_used"],
        "exclusions": report["schema"]["by_reason"],
        "threshold": predictor.threshold,
        "metrics": metrics,
    }
    note = refit_holdout_note(spec, predictor.version) if holdout else None
    if note:
        # A refit version has seen the hold-out: `metrics` (what `dvc metrics show` and
        # `dvc metrics diff` read) are the hold-out figures its training run logged for the
        # same setup fitted on the training split; the re-scored ones are kept apart.
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
    return result


def refit_holdout_note(spec: ServiceSpec, version: str) -> str | None:
    """A version refit on all rows has seen the hold-out: say so, with its honest figure.

    Args:
        spec: The service.
        version: The registered version.

    Returns:
        The note, or None when the version was not refit or its tags cannot be read.
    """
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
