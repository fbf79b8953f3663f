"""Estimator-agnostic training: split, cross-validate every candidate, choose the threshold (or
calibrate the interval) on out-of-fold predictions, fit the winner, evaluate on the hold-out,
log everything to MLflow, register a version and run the champion/challenger gate.

With ``refit_full: true`` in the service's params, the same candidate (same params, threshold or
interval quantiles) is then fitted again on all rows and *that* model is registered; every figure
(CV, hold-out, plots, importance, fairness, the gate's score) stays the one of the model fitted on
the training split only."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import skops.io as sio
import yaml
from sklearn.base import BaseEstimator
from sklearn.inspection import permutation_importance
from sklearn.model_selection import (
    train_test_split,
)

from portfolio.core import mlflow_model, registry
from portfolio.core.data import Dataset, load_training_data, read_raw_csv
from portfolio.core.estimators import conformal_log_quantiles
from portfolio.core.explain.insights import log_training_insights
from portfolio.core.serving.batch import BatchReport, score_chunk
from portfolio.core.serving.inference import Predictor
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec
from portfolio.core.training import evaluation as ev
from portfolio.core.training.fairness import log_fairness
from portfolio.core.training.model_card import write_model_card
from portfolio.core.training.outcome import CandidateResult, TrainOutcome

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
# With refit_full: the split-fitted model's hold-out scores (the served model has seen those rows).
HOLDOUT_PREDICTIONS_ARTIFACT = "holdout_predictions.json"
# Where the gate's champion score came from.
LOGGED = "logged hold-out metric"
REEVALUATED = "re-evaluated on hold-out"


def no_progress(desc: str, done: int, total: int) -> None:
    return None


def load_params(service: str, settings: Settings) -> dict[str, Any]:
    """The service's section of ``params.yaml`` (DVC's params file); {} when absent."""
    path = settings.home / "params.yaml"
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    return dict(data.get(service) or {})


def score_rows(spec: ServiceSpec, est: BaseEstimator, X: pd.DataFrame) -> np.ndarray:
    """A fitted candidate's scores: the positive-class probability, or the prediction."""
    return spec.strategy.scores(est, X)


def score_metrics(spec: ServiceSpec, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Point metrics of ``score_rows`` output (classifiers at threshold 0.5: only the
    threshold-free ones, ROC-AUC and PR-AUC, are meant to be read)."""
    return spec.strategy.point_metrics(y, scores)


def _fold_score(spec: ServiceSpec, y: np.ndarray, scores: np.ndarray) -> float:
    return score_metrics(spec, y, scores)[spec.primary_metric]


def cv_splitter(spec: ServiceSpec, settings: Settings) -> Any:
    """The folds ``cross_validate`` uses: stratified for classifiers, ``settings.cv_folds`` of
    them, shuffled with ``settings.seed``."""
    return spec.strategy.splitter(settings.cv_folds, settings.seed)


def cross_validate(
    spec: ServiceSpec,
    name: str,
    params: Mapping[str, Any],
    X: pd.DataFrame,
    y: pd.Series,
    settings: Settings,
    progress: Progress = no_progress,
) -> CandidateResult:
    """Out-of-fold scores for one candidate (every row scored by a model that never saw it)."""
    splitter = cv_splitter(spec, settings)
    oof = np.zeros(len(X))
    fold_scores = []
    y_arr = y.to_numpy()
    for i, (tr, va) in enumerate(splitter.split(X, y_arr), start=1):
        est = spec.candidates[name](params)
        est.fit(X.iloc[tr], y.iloc[tr])  # type: ignore[attr-defined]
        oof[va] = score_rows(spec, est, X.iloc[va])
        fold_scores.append(_fold_score(spec, y_arr[va], oof[va]))
        progress(f"{spec.name}: CV {name}", i, settings.cv_folds)
    return CandidateResult(name, oof, fold_scores)


def _git_commit(settings: Settings) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=settings.home,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return out.stdout.strip()
    except Exception:
        return "unknown"


def predict_scores(spec: ServiceSpec, model: Any, X: pd.DataFrame) -> dict[str, np.ndarray]:
    """Everything an evaluation needs from a fitted, wrapped model."""
    return spec.strategy.holdout_scores(model, X)


def evaluate_model(
    spec: ServiceSpec, model: Any, X: pd.DataFrame, y: np.ndarray, settings: Settings
) -> dict[str, dict[str, float]]:
    scores = predict_scores(spec, model, X)
    return spec.strategy.evaluate(model, scores, y, settings.bootstrap_rounds, settings.seed)


def fit_final(
    spec: ServiceSpec, best: CandidateResult, params: Mapping[str, Any], X: pd.DataFrame, y: pd.Series
) -> Any:
    """The chosen candidate wrapped with its out-of-fold threshold (classification) or interval
    quantiles (regression), fitted on ``X``, ``y``."""
    estimator = spec.candidates[best.name](params)
    return spec.strategy.wrap(spec, estimator, best).fit(X, y)


def _refit_interval_coverage(spec: ServiceSpec, params: Mapping[str, Any], refit_full: bool) -> float | None:
    """``refit_interval_coverage`` from a service's params: the level at which the refit model's
    interval is calibrated on the hold-out (regressors with ``refit_full`` only)."""
    value = params.get("refit_interval_coverage")
    if value is None:
        return None
    if not spec.strategy.interval or not refit_full:
        raise ValueError(f"{spec.name}: refit_interval_coverage needs a regressor with refit_full: true")
    if not isinstance(value, int | float) or not 0 < float(value) < 1:
        raise ValueError(f"{spec.name}: refit_interval_coverage must be a number in (0, 1), not {value!r}")
    return float(value)


def split(spec: ServiceSpec, ds: Dataset, settings: Settings) -> tuple[Any, Any, Any, Any]:
    """The stratified hold-out. Same seed, same data → same split, so the gate compares a new
    model and the champion on identical rows."""
    return train_test_split(
        ds.X,
        ds.y,
        test_size=settings.test_size,
        random_state=settings.seed,
        stratify=spec.strategy.stratify(ds.y),
    )


@dataclass
class Evaluation:
    """The split-fitted model's hold-out evidence: every reported figure comes from it."""

    model: Any
    test: dict[str, dict[str, float]]
    scores: dict[str, np.ndarray]
    importance: dict[str, float]
    fairness: dict[str, Any] | None


@dataclass
class ServedModel:
    """The logged model: the split-fitted one, or with ``refit_full`` a fit on all rows."""

    model: Any
    best: CandidateResult  # with the served interval quantiles
    fit_X: pd.DataFrame
    model_uri: str
    sha256: str


def train_service(
    spec: ServiceSpec,
    settings: Settings,
    params: Mapping[str, Any] | None = None,
    progress: Progress = no_progress,
    data_path: Path | None = None,
) -> TrainOutcome:
    """Train a service: select the candidate, evaluate and log, log the served model, register
    and gate, write the model card.

    Args:
        spec: The service.
        settings: Paths, split, CV and bootstrap settings, the tracking store.
        params: The service's params.yaml section (default: read from params.yaml).
        progress: Called as (description, done, total) while candidates are fitted.
        data_path: The raw CSV (default: the service's file in the data folder).

    Returns:
        The run's outcome (registered version, alias, metrics).
    """
    registry.configure(settings)
    params = dict(params if params is not None else load_params(spec.name, settings))
    cand_params: dict[str, Any] = dict(params.get("candidates") or {})
    refit_full = bool(params.get("refit_full", False))
    refit_coverage = _refit_interval_coverage(spec, params, refit_full)
    ds = load_training_data(spec, settings, data_path)
    X_train, X_test, y_train, y_test = split(spec, ds, settings)

    experiment_id = registry.ensure_experiment(spec.name, settings)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{spec.name}-train") as run:
        results, best = select_candidate(
            spec, settings, cand_params, X_train, y_train, experiment_id, progress
        )
        best_params = dict(cand_params.get(best.name) or {})
        progress(f"{spec.name}: fit {best.name}", 0, 1)
        # Fitted on the training split only: every reported figure comes from this model.
        model = fit_final(spec, best, best_params, X_train, y_train)
        progress(f"{spec.name}: fit {best.name}", 1, 1)
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            evaluation = evaluate_and_log(spec, settings, model, best, X_test, y_test, ds, tmp)
            served = log_served_model(
                spec,
                settings,
                evaluation,
                best,
                best_params,
                ds,
                X_train,
                X_test,
                y_test,
                refit_coverage,
                refit_full,
                tmp,
                progress,
            )
        candidates_table = {
            name: {f"cv_{k}": v["value"] for k, v in res.cv_metrics.items()}
            | {f"cv_{spec.primary_metric}_fold_std": float(np.std(res.fold_scores))}
            for name, res in results.items()
        }
        version, gate = register_and_gate(spec, settings, served, evaluation, refit_full, ds, X_test, y_test)
        outcome = TrainOutcome(
            service=spec.name,
            run_id=run.info.run_id,
            version=version,
            alias=gate["alias"],
            best=best.name,
            threshold=best.threshold,
            cv=best.cv_metrics,
            test=evaluation.test,
            candidates=candidates_table,
            gate=gate,
            data_report=ds.report(),
            refit_full=refit_full,
            final_fit_rows=len(served.fit_X),
            params=best_params,
            importance=evaluation.importance,
            fairness=evaluation.fairness,
            train_rows=len(X_train),
            refit_interval=(
                (refit_coverage, *served.best.quantiles)
                if refit_coverage is not None and served.best.quantiles is not None
                else None
            ),
        )
        mlflow.log_artifact(str(write_model_card(spec, settings, outcome)))
    return outcome


def select_candidate(
    spec: ServiceSpec,
    settings: Settings,
    cand_params: Mapping[str, Any],
    X_train: pd.DataFrame,
    y_train: pd.Series,
    experiment_id: str,
    progress: Progress = no_progress,
) -> tuple[dict[str, CandidateResult], CandidateResult]:
    """Cross-validate every candidate (a nested MLflow run each), choose its threshold or interval
    out of fold, and pick the best by the mean fold score of the spec's selection metric.

    Returns:
        Every candidate's result, and the best one.
    """
    y_tr = y_train.to_numpy()
    results: dict[str, CandidateResult] = {}
    for name in spec.candidates:
        with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True):
            p = dict(cand_params.get(name) or {})
            res = cross_validate(spec, name, p, X_train, y_train, settings, progress)
            rule = spec.strategy.calibrate(spec, y_tr, res.oof, settings.bootstrap_rounds, settings.seed)
            res.cv_metrics, res.threshold, res.quantiles = rule.metrics, rule.threshold, rule.quantiles
            mlflow.log_params({f"{k}": v for k, v in p.items()})
            mlflow.log_metrics(ev.flatten("cv", res.cv_metrics))
            mlflow.log_metric(f"cv_{spec.primary_metric}_fold_mean", res.primary)
            mlflow.log_metric(f"cv_{spec.primary_metric}_fold_std", float(np.std(res.fold_scores)))
            results[name] = res
    best = results[next(iter(results))]
    for res in results.values():
        if not spec.prefers(best.primary, res.primary):
            best = res
    return results, best


def evaluate_and_log(
    spec: ServiceSpec,
    settings: Settings,
    model: Any,
    best: CandidateResult,
    X_test: pd.DataFrame,
    y_test: pd.Series,
    ds: Dataset,
    tmp: Path,
) -> Evaluation:
    """The split-fitted model on the hold-out: metrics with intervals, plots, permutation
    importance, the data report and the fairness report, logged to the active run.

    Returns:
        The evaluation (metrics, hold-out scores, importance, fairness).
    """
    y_te = y_test.to_numpy()
    test = evaluate_model(spec, model, X_test, y_te, settings)
    scores = predict_scores(spec, model, X_test)
    plots = ev.evaluation_plots(spec.strategy, model, y_te, scores, tmp / "plots", spec.title)
    imp = permutation_importance(
        model,
        X_test,
        y_test,
        scoring=spec.strategy.importance_scoring,
        n_repeats=5,
        random_state=settings.seed,
        n_jobs=1,
    )
    importance = {col: float(v) for col, v in zip(X_test.columns, imp.importances_mean, strict=True)}
    plots.append(ev.importance_plot(importance, tmp / "plots" / "importance.png", spec.title))
    for p_ in plots:
        mlflow.log_artifact(str(p_), artifact_path="plots")
    mlflow.log_dict(importance, "feature_importance.json")
    mlflow.log_dict(ds.report(), "data_report.json")
    fair = log_fairness(spec, X_test, y_te, scores.get("proba"), best.threshold)
    return Evaluation(model, test, scores, importance, fair)


def log_served_model(
    spec: ServiceSpec,
    settings: Settings,
    evaluation: Evaluation,
    best: CandidateResult,
    best_params: Mapping[str, Any],
    ds: Dataset,
    X_train: pd.DataFrame,
    X_test: pd.DataFrame,
    y_test: pd.Series,
    refit_coverage: float | None,
    refit_full: bool,
    tmp: Path,
    progress: Progress = no_progress,
) -> ServedModel:
    """Log the model that will be served: the split-fitted one, or with ``refit_full`` a fresh
    fit of the same candidate/params/threshold/quantiles on all rows (dataset order); with its
    drift reference and explanation importance, the run's params, metrics and tags.

    Returns:
        The served model with its logged URI and artifact checksum.
    """
    y_te = y_test.to_numpy()
    scores = evaluation.scores
    served, fit_X, served_best = evaluation.model, X_train, best
    if refit_full:
        progress(f"{spec.name}: refit {best.name} on all rows", 0, 1)
        if refit_coverage is not None:
            # The refit model is more accurate on new rows than the out-of-fold
            # predictions that calibrate the split model (CarVision: its price
            # statistics match more re-posts), so its interval is calibrated on the split
            # model's hold-out residuals, at the level params.yaml gives.
            q = conformal_log_quantiles(y_te, scores["pred"], refit_coverage)
            served_best = dataclasses.replace(best, quantiles=q)
        served, fit_X = fit_final(spec, served_best, best_params, ds.X, ds.y), ds.X
        progress(f"{spec.name}: refit {best.name} on all rows", 1, 1)
        # Re-scoring the hold-out with the served model would be in-sample, so the split
        # model's hold-out predictions are kept for views that plot them (dashboard).
        mlflow.log_dict(
            {"actual": y_te.tolist(), **{k: v.tolist() for k, v in scores.items()}},
            HOLDOUT_PREDICTIONS_ARTIFACT,
        )
    # Drift reference + explanation importance (explain/insights.py). Both describe the served
    # model: its reference is the rows it was fitted on, profiled with ITS scores (what
    # live score drift is compared against), and its explanations are of ITS function.
    log_training_insights(
        spec,
        served,
        fit_X,
        X_test,
        tmp / "plots",
        settings.seed,
        source="all rows (refit after evaluation)" if refit_full else "training split",
    )
    mlflow.log_params(
        {
            "service": spec.name,
            "model": best.name,
            **{f"{best.name}.{k}": v for k, v in best_params.items()},
            "cv_folds": settings.cv_folds,
            "test_size": settings.test_size,
            "seed": settings.seed,
            "train_rows": len(X_train),
            "test_rows": len(X_test),
            "refit_full": refit_full,
            "final_fit_rows": len(fit_X),
        }
    )
    mlflow.log_params(spec.strategy.decision_params(best.threshold, best.quantiles))
    if refit_coverage is not None:
        assert served_best.quantiles is not None
        mlflow.log_params(
            {
                "refit_interval_coverage": refit_coverage,
                "served_interval_q_low": served_best.quantiles[0],
                "served_interval_q_high": served_best.quantiles[1],
            }
        )
    mlflow.log_metrics({**ev.flatten("cv", best.cv_metrics), **ev.flatten("test", evaluation.test)})
    mlflow.set_tags(
        {
            "git_commit": _git_commit(settings),
            "data_file": ds.path.name,
            "data_md5": ds.md5,
            "service": spec.name,
        }
    )

    # Lineage in the MLflow UI: the file the model was trained on, by name and DVC md5.
    dataset = mlflow.data.from_pandas(  # type: ignore[attr-defined]
        ds.X.assign(**{spec.target: ds.y}),
        targets=spec.target,
        name=ds.path.name,
        digest=ds.md5,
    )
    mlflow.log_input(
        dataset,
        context="training",
        tags={
            "md5": ds.md5,
            "rows_in_file": str(len(ds.validation.frame)),
            "rows_used": str(len(ds.X)),
        },
    )

    # The registered model is the service's pyfunc (mlflow_model.py): the skops file of
    # the fitted pipeline, its checksum, and the code that gives the CLI's outputs.
    model_file = tmp / registry.MODEL_FILE
    sio.dump(served, model_file)
    sha = registry.sha256_file(model_file)
    example = read_raw_csv(ds.path).loc[X_train.index[:5], spec.feature_names]
    loaded = registry.LoadedModel(spec.name, "", served, sha, None)
    output_example = score_chunk(Predictor(spec, loaded, compile=False), example, BatchReport())
    info = mlflow_model.log_model(spec, model_file, sha, example, output_example)
    mlflow.set_tag("model_sha256", sha)
    return ServedModel(served, served_best, fit_X, info.model_uri, sha)


def register_and_gate(
    spec: ServiceSpec,
    settings: Settings,
    served: ServedModel,
    evaluation: Evaluation,
    refit_full: bool,
    ds: Dataset,
    X_test: pd.DataFrame,
    y_test: pd.Series,
) -> tuple[str, dict[str, Any]]:
    """Register the logged model as a new version and run the champion/challenger gate.

    Registration is the last step: an interrupted run never leaves a half-registered version,
    and the alias moves only after the new version is complete.

    Returns:
        The new version and the gate's decision.
    """
    metric = spec.primary_metric
    mv = mlflow.register_model(
        served.model_uri,
        spec.name,
        tags={
            "sha256": served.sha256,
            registry.REFIT_TAG: str(refit_full).lower(),
            registry.holdout_tag(metric): str(float(evaluation.test[metric]["value"])),
        },
    )
    provenance = {
        "data_md5": ds.md5,
        "test_size": str(settings.test_size),
        "seed": str(settings.seed),
    }
    gate = champion_gate(
        spec, settings, str(mv.version), evaluation.test, X_test, y_test.to_numpy(), provenance=provenance
    )
    mlflow.log_dict(gate, "gate.json")
    return str(mv.version), gate


def champion_gate(
    spec: ServiceSpec,
    settings: Settings,
    new_version: str,
    new_test: dict[str, dict[str, float]],
    X_test: pd.DataFrame,
    y_test: np.ndarray,
    *,
    provenance: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Move ``champion`` to the new version only if it is not worse than the current champion on
    the same hold-out rows; otherwise the new version becomes ``challenger``.

    ``new_test`` is always the hold-out metric of a model fitted on the training split (also for a
    refit version). A champion that was refit on all rows has seen these rows, so its recorded
    hold-out metric (``holdout_<metric>`` tag) is used instead of re-scoring it; any other champion
    is re-evaluated on ``X_test``. ``provenance`` (data md5, test_size, seed of the new run) is
    compared with the champion's run: a difference is noted in the reason (the scores are still
    compared)."""
    metric = spec.primary_metric
    new_score = new_test[metric]["value"]
    current = registry.champion_version(spec.name)
    result: dict[str, Any] = {"metric": metric, "new_version": new_version, "new": new_score}
    if current is None:
        registry.set_alias(spec.name, registry.CHAMPION, new_version)
        return result | {"alias": registry.CHAMPION, "champion_version": None, "reason": "first model"}
    champ_score = registry.logged_holdout_metric(current.tags or {}, metric)
    source = LOGGED
    if champ_score is None:
        source = REEVALUATED
        try:
            champ = registry.load_version(spec, settings, current.version)
            champ_score = evaluate_model(spec, champ.model, X_test, y_test, settings)[metric]["value"]
        except Exception as exc:  # an unreadable champion must not block a good new model
            log.warning("current champion v%s could not be evaluated: %s", current.version, exc)
            champ_score, source = None, "unavailable (champion could not be evaluated)"
    result |= {"champion_version": str(current.version), "champion": champ_score, "champion_source": source}
    note = f"champion's score: {source}"
    if provenance:
        theirs = registry.run_provenance(current.run_id)
        differs = sorted(k for k, v in provenance.items() if k in theirs and theirs[k] != v)
        if differs:
            why = (
                "its logged metric is from other hold-out rows"
                if source == LOGGED
                else "it may have been trained on some of these hold-out rows"
            )
            note += f"; its training run used a different {', '.join(differs)}: {why}"
    if champ_score is None or spec.prefers(new_score, champ_score):
        registry.set_alias(spec.name, registry.CHAMPION, new_version)
        return result | {"alias": registry.CHAMPION, "reason": f"{metric} not worse than champion ({note})"}
    registry.set_alias(spec.name, registry.CHALLENGER, new_version)
    return result | {"alias": registry.CHALLENGER, "reason": f"{metric} worse than champion ({note})"}
