"""Data drift for every service: the training reference profile saved with each model, the batch
drift report (`portfolio drift`), and the live rolling window behind the API's drift gauges.

Reference (``drift_reference.json``, logged as an artifact of the training run that produced the
model, so it is found through the registry like the model itself): for every input field a
histogram of the training rows (deciles for continuous numbers, one bin per value for discrete
numbers with at most 20 distinct values, one bin per category, plus a missing bin), a joint sample
of up to 2,000 training rows (for the KS test and as the background of explanations) and the same
histogram for the model's training scores (prediction drift).

Methods, per field type:
- numeric (int, float, date as days): PSI over the reference bins, two-sample Kolmogorov-Smirnov
  test against the reference sample (combined with a chi-square test of the missing share when
  either side has missing values);
- categorical (category, text: the 30 most frequent values plus "(other)"): PSI over categories
  and a chi-square test of homogeneity (reference counts vs current counts).

A field is ``drifted`` when BOTH hold: PSI >= its threshold (0.1, "moderate shift" on the usual
PSI scale, raised on small batches to the 99th percentile of PSI's no-drift sampling noise,
(1/n + 1/N) x chi-square(bins - 1): 0.1 from about 250 rows on, 0.24 on 100 rows) AND the test's
p-value < ``alpha`` / number of fields (0.05, Bonferroni-corrected). The size criterion alone
false-alarms on small batches, the test alone flags practically irrelevant shifts on large ones
(any difference is "significant" on 100k rows). Together, on random samples of the services' own
data (500 samples each, BankChurn / Telecom): 3 / 8 false alarms at 100 rows, 1 / 0 at 200 rows,
0 / 0 at 300 rows; so the live window is only judged from 200 records on. ``drift_detected`` is
true when any field drifted.

Why not Evidently (evaluated: ``evidently==0.7.23``): it adds 23 packages (about 46 MB of wheels:
statsmodels, nltk, faker, litestar, ...) and pins ``plotly<6``, which would downgrade the
``plotly>=7`` the dashboard uses. The statistics needed here are a few lines of numpy/scipy
(scipy is already installed with scikit-learn), and the HTML report is a standalone plotly page.
"""

from __future__ import annotations

import datetime as dt
import html
import itertools
import json
import logging
import math
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from portfolio.core.schema import Field
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "drift_reference.json"
FORMAT = "portfolio-drift-reference/1"
MISSING = "(missing)"
OTHER = "(other)"
DISCRETE_MAX_VALUES = 20
TOP_CATEGORIES = 30
NUMERIC_BINS = 10
SAMPLE_ROWS = 2000


@dataclass(frozen=True)
class Thresholds:
    """When a field counts as drifted (see the module docstring)."""

    psi: float = 0.1
    # Small batches: the PSI threshold is at least this quantile of PSI's no-drift noise.
    psi_noise_quantile: float = 0.99
    alpha: float = 0.05
    # The live window: fewer rows than this are not judged (drifted stays 0).
    min_rows: int = 200


# --------------------------------------------------------------------------------- value handling
def _is_numeric(f: Field) -> bool:
    return f.kind in ("int", "float", "date")


def numeric_values(values: Any, f: Field) -> np.ndarray:
    """Typed (or raw API) values of a numeric/date field as float64 with NaN for missing; dates
    become days since 1970-01-01."""
    s = pd.Series(values, dtype=object) if not isinstance(values, pd.Series) else values
    if f.kind == "date":
        d = pd.to_datetime(s, errors="coerce")
        out = (d - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy(dtype=float, na_value=np.nan)
        return np.asarray(out / 86400.0, dtype=float)
    return np.asarray(pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan), dtype=float)


def category_values(values: Any) -> np.ndarray:
    """Values of a categorical/text field as strings, MISSING for missing."""
    arr = values.to_numpy(dtype=object) if isinstance(values, pd.Series) else list(values)
    return np.array([MISSING if v is None or v is pd.NA or v != v else str(v) for v in arr], dtype=object)


def typed_frame(rows: Mapping[str, Sequence[Any]] | pd.DataFrame, fields: Sequence[Field]) -> pd.DataFrame:
    """Columns → a frame typed like ``schema.validate_frame``'s output (float64 numbers, object
    categories with None, datetime64 dates), for scoring stored samples with a model."""
    src = (
        rows if isinstance(rows, pd.DataFrame) else pd.DataFrame({f.name: list(rows[f.name]) for f in fields})
    )
    out: dict[str, pd.Series] = {}
    for f in fields:
        col = src[f.name]
        if f.kind in ("int", "float"):
            out[f.name] = pd.to_numeric(col, errors="coerce").astype("float64")
        elif f.kind == "date":
            out[f.name] = pd.to_datetime(col, errors="coerce").astype("datetime64[ns]")
        else:
            obj = col.astype(object)
            out[f.name] = obj.where(obj.notna(), None)
    return pd.DataFrame(out, index=src.index)


def _json_value(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float | np.floating):
        return None if math.isnan(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, pd.Timestamp | dt.date | np.datetime64):
        ts = pd.Timestamp(v)
        return None if pd.isna(ts) else ts.isoformat()
    if v is pd.NaT:
        return None
    return v if isinstance(v, str | int | bool) else str(v)


# ------------------------------------------------------------------------------------ histograms
def _numeric_profile(x: np.ndarray) -> dict[str, Any]:
    present = x[~np.isnan(x)]
    uniq = np.unique(present)
    if len(uniq) == 0:
        edges: np.ndarray = np.array([], dtype=float)
        discrete = True
    elif len(uniq) <= DISCRETE_MAX_VALUES:
        edges = (uniq[:-1] + uniq[1:]) / 2.0  # one bin per value (out-of-range → end bins)
        discrete = True
    else:
        qs = np.quantile(present, np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1])
        edges = np.unique(qs)
        discrete = False
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return {
        "kind": "numeric",
        "discrete": discrete,
        "values": [float(v) for v in uniq] if discrete else None,
        "edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "missing": int(np.isnan(x).sum()),
        "n": len(x),
        "mean": float(present.mean()) if len(present) else None,
        "std": float(present.std()) if len(present) else None,
        "quantiles": {
            str(q): float(np.quantile(present, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95) if len(present)
        },
    }


def _categorical_profile(x: np.ndarray, declared: Sequence[str] | None) -> dict[str, Any]:
    present = x[x != MISSING]
    vc = pd.Series(present).value_counts()
    if declared is not None:
        cats = list(dict.fromkeys([*declared, *[str(c) for c in vc.index]]))
    else:
        cats = [str(c) for c in vc.index[:TOP_CATEGORIES]]
    counts = [int(vc.get(c, 0)) for c in cats]
    return {
        "kind": "categorical",
        "categories": cats,
        "counts": counts,
        "other": int(len(present) - sum(counts)),
        "missing": int(len(x) - len(present)),
        "n": len(x),
    }


def _bin_counts(profile: Mapping[str, Any], values: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels, reference counts, current counts) on the reference's bins, missing bin last."""
    ref = np.asarray([*profile["counts"]], dtype=float)
    if profile["kind"] == "numeric":
        edges = np.asarray(profile["edges"], dtype=float)
        present = values[~np.isnan(values)]
        cur = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1).astype(
            float
        )
        labels = _numeric_labels(profile)
        n_missing = float(np.isnan(values).sum())
    else:
        cats = list(profile["categories"])
        index = {c: i for i, c in enumerate(cats)}
        cur = np.zeros(len(cats) + 1)
        n_missing = 0.0
        for v, n in zip(*np.unique(values, return_counts=True), strict=True):
            if v == MISSING:
                n_missing = float(n)
            else:
                cur[index.get(v, len(cats))] += n
        ref = np.append(ref, float(profile["other"]))
        labels = [*cats, OTHER]
    return (
        [*labels, MISSING],
        np.append(ref, float(profile["missing"])),
        np.append(cur, n_missing),
    )


def _fmt_num(v: float) -> str:
    return f"{v:.4g}"


def _numeric_labels(profile: Mapping[str, Any]) -> list[str]:
    edges = profile["edges"]
    if profile["discrete"]:
        return [_fmt_num(v) for v in profile["values"]] or ["(none)"]
    bounds = [-math.inf, *edges, math.inf]
    return [
        f"[{_fmt_num(lo) if lo != -math.inf else '-inf'}, {_fmt_num(hi) if hi != math.inf else 'inf'})"
        for lo, hi in itertools.pairwise(bounds)
    ]


def psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Population Stability Index over bins (bins empty on both sides are ignored; a pseudo-count
    of 0.5 per bin keeps a bin empty on one side finite)."""
    keep = (ref_counts + cur_counts) > 0
    r, c = ref_counts[keep], cur_counts[keep]
    if len(r) == 0 or c.sum() == 0 or r.sum() == 0:
        return 0.0
    p = (r + 0.5) / (r.sum() + 0.5 * len(r))
    q = (c + 0.5) / (c.sum() + 0.5 * len(c))
    return float(np.sum((q - p) * np.log(q / p)))


def psi_threshold(ref_counts: np.ndarray, cur_counts: np.ndarray, thresholds: Thresholds) -> float:
    """``thresholds.psi``, raised on small batches to PSI's sampling noise: without drift, PSI is
    approximately (1/n + 1/N) x chi-square(bins - 1) (n, N: current and reference rows), so its
    ``psi_noise_quantile`` quantile is the smallest PSI that is not plain noise."""
    n, big_n = float(cur_counts.sum()), float(ref_counts.sum())
    bins = int(((ref_counts + cur_counts) > 0).sum())
    if n == 0 or big_n == 0 or bins < 2:
        return thresholds.psi
    noise = float(stats.chi2.ppf(thresholds.psi_noise_quantile, bins - 1)) * (1.0 / n + 1.0 / big_n)
    return max(thresholds.psi, noise)


def _chi2_pvalue(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    keep = (ref_counts + cur_counts) > 0
    table = np.vstack([ref_counts[keep], cur_counts[keep]])
    if table.shape[1] < 2 or table[1].sum() == 0 or table[0].sum() == 0:
        return 1.0
    # Pearson's chi-square test of homogeneity (= scipy's chi2_contingency without Yates'
    # correction), in numpy: scipy's wrapper costs more than the arithmetic at scrape time.
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    return float(stats.chi2.sf(stat, table.shape[1] - 1))


# -------------------------------------------------------------------------------------- reference
@dataclass
class DriftReference:
    """The training-time profile of a model's inputs and scores (JSON-serialisable)."""

    data: dict[str, Any]

    @classmethod
    def from_frame(
        cls,
        spec: ServiceSpec,
        X: pd.DataFrame,
        *,
        scores: Sequence[float] | np.ndarray | None = None,
        threshold: float | None = None,
        source: str = "training split",
        seed: int = 0,
        sample_rows: int = SAMPLE_ROWS,
    ) -> DriftReference:
        """Profile typed rows ``X`` (and optionally the model's scores on them)."""
        features: dict[str, Any] = {}
        for f in spec.fields:
            if _is_numeric(f):
                features[f.name] = _numeric_profile(numeric_values(X[f.name], f)) | {"field_kind": f.kind}
            else:
                features[f.name] = _categorical_profile(
                    category_values(X[f.name]), f.categories if f.kind == "category" else None
                ) | {"field_kind": f.kind}
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(X))[:sample_rows]
        sample = {f.name: [_json_value(v) for v in X[f.name].iloc[idx].tolist()] for f in spec.fields}
        data: dict[str, Any] = {
            "format": FORMAT,
            "service": spec.name,
            "task": spec.task,
            "source": source,
            "rows": len(X),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "features": features,
            "sample": sample,
            "prediction": None,
        }
        if scores is not None:
            s = np.asarray(scores, dtype=float)
            pred = _numeric_profile(s) if spec.task == "regression" else _score_profile(s)
            pred["threshold"] = threshold
            if threshold is not None:
                pred["positive_rate"] = float(np.mean(s >= threshold))
            data["prediction"] = pred
        return cls(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftReference:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a drift reference (format {data.get('format')!r}, expected {FORMAT!r})")
        return cls(dict(data))

    def to_dict(self) -> dict[str, Any]:
        return self.data

    @property
    def features(self) -> dict[str, Any]:
        return dict(self.data["features"])

    def sample_frame(self, spec: ServiceSpec, rows: int | None = None) -> pd.DataFrame:
        """The stored training rows, typed (the background of explanations)."""
        frame = typed_frame(self.data["sample"], spec.fields)
        return frame.head(rows) if rows is not None else frame


def _score_profile(s: np.ndarray) -> dict[str, Any]:
    """Classifier probabilities: deciles of the training scores as bins (never 'discrete')."""
    prof = _numeric_profile(s)
    if prof["discrete"]:  # a score with few distinct values: still bin by deciles
        edges = np.unique(np.quantile(s, np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, s, side="right"), minlength=len(edges) + 1)
        prof |= {"discrete": False, "values": None, "edges": edges.tolist(), "counts": counts.tolist()}
    return prof


# ---------------------------------------------------------------------------------------- compare
def compare_feature(
    name: str,
    f: Field,
    profile: Mapping[str, Any],
    current: Any,
    reference_sample: Sequence[Any] | None,
    thresholds: Thresholds,
    n_tests: int,
) -> dict[str, Any]:
    """Drift of one field: PSI, the type's test, and the verdict."""
    if profile["kind"] == "numeric":
        values = numeric_values(current, f) if not isinstance(current, np.ndarray) else current
        labels, ref_counts, cur_counts = _bin_counts(profile, values)
        ref_values = (
            numeric_values(pd.Series(list(reference_sample), dtype=object), f)
            if reference_sample is not None
            else np.array([])
        )
        ref_present, cur_present = ref_values[~np.isnan(ref_values)], values[~np.isnan(values)]
        if len(ref_present) >= 2 and len(cur_present) >= 2:
            ks = stats.ks_2samp(ref_present, cur_present)
            ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
        else:
            ks_stat, ks_p = 0.0, 1.0
        method = "psi+ks"
        pvalue = ks_p
        if profile["missing"] or np.isnan(values).any():
            present_ref = float(profile["n"] - profile["missing"])
            miss_p = _chi2_pvalue(
                np.array([present_ref, float(profile["missing"])]),
                np.array([float(len(cur_present)), float(np.isnan(values).sum())]),
            )
            pvalue = min(1.0, 2 * min(ks_p, miss_p))
            method = "psi+ks+missing-chi2"
        extra: dict[str, Any] = {
            "ks_statistic": ks_stat,
            "ks_pvalue": ks_p,
            "reference_mean": profile.get("mean"),
            "current_mean": float(cur_present.mean()) if len(cur_present) else None,
        }
    else:
        cats = category_values(current)
        labels, ref_counts, cur_counts = _bin_counts(profile, cats)
        pvalue = _chi2_pvalue(ref_counts, cur_counts)
        method = "psi+chi2"
        extra = {"chi2_pvalue": pvalue}
    score = psi(ref_counts, cur_counts)
    n = float(cur_counts.sum())
    psi_limit = psi_threshold(ref_counts, cur_counts, thresholds)
    p_limit = thresholds.alpha / max(n_tests, 1)
    drifted = bool(n > 0 and score >= psi_limit and pvalue < p_limit)
    return {
        "type": "numeric" if profile["kind"] == "numeric" else "categorical",
        "method": method,
        "psi": score,
        "pvalue": pvalue,
        "psi_threshold": psi_limit,
        "pvalue_threshold": p_limit,
        "drifted": drifted,
        **extra,
        "rows": int(n),
        "bins": labels,
        "reference_share": (ref_counts / max(ref_counts.sum(), 1)).round(6).tolist(),
        "current_share": (cur_counts / max(n, 1)).round(6).tolist(),
    }


def compare_predictions(pred_profile: Mapping[str, Any], scores: np.ndarray, task: str) -> dict[str, Any]:
    """Prediction drift (reported, not part of ``drift_detected``: it follows from input drift)."""
    s = np.asarray(scores, dtype=float)
    labels, ref_counts, cur_counts = _bin_counts(pred_profile, s)
    out: dict[str, Any] = {
        "psi": psi(ref_counts, cur_counts),
        "reference_mean": pred_profile.get("mean"),
        "current_mean": float(np.nanmean(s)) if len(s) else None,
        "bins": labels,
        "reference_share": (ref_counts / max(ref_counts.sum(), 1)).round(6).tolist(),
        "current_share": (cur_counts / max(cur_counts.sum(), 1)).round(6).tolist(),
    }
    threshold = pred_profile.get("threshold")
    if task == "classification" and threshold is not None:
        out["reference_positive_rate"] = pred_profile.get("positive_rate")
        out["current_positive_rate"] = float(np.mean(s >= threshold)) if len(s) else None
    return out


def drift_report(
    spec: ServiceSpec,
    reference: DriftReference,
    current: pd.DataFrame,
    *,
    scores: np.ndarray | None = None,
    thresholds: Thresholds = Thresholds(),
) -> dict[str, Any]:
    """Compare typed, valid rows ``current`` with ``reference``: per field and overall."""
    feats = reference.features
    missing = [f.name for f in spec.fields if f.name not in feats]
    if missing:
        raise ValueError(f"the reference has no profile for field(s) {missing}: it belongs to another model")
    sample = reference.data.get("sample") or {}
    results = {
        f.name: compare_feature(
            f.name, f, feats[f.name], current[f.name], sample.get(f.name), thresholds, len(spec.fields)
        )
        for f in spec.fields
    }
    drifted = [name for name, r in results.items() if r["drifted"]]
    report: dict[str, Any] = {
        "service": spec.name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "reference": {
            "source": reference.data.get("source"),
            "rows": reference.data.get("rows"),
            "created": reference.data.get("created"),
        },
        "current": {"rows": len(current)},
        "thresholds": {
            "psi": thresholds.psi,
            "alpha": thresholds.alpha,
            "pvalue_per_feature": thresholds.alpha / max(len(spec.fields), 1),
            "rule": "drifted = psi >= psi threshold (0.1, higher on small batches: PSI noise) "
            "AND p-value < alpha / number of features",
        },
        "drift_detected": bool(drifted),
        "drifted_features": drifted,
        "n_drifted": len(drifted),
        "share_drifted": len(drifted) / max(len(results), 1),
        "features": results,
    }
    pred = reference.data.get("prediction")
    if scores is not None and pred is not None:
        report["prediction"] = compare_predictions(pred, scores, spec.task)
    return report


# ------------------------------------------------------------------------------ at training time
EXPLANATION_IMPORTANCE_ARTIFACT = "explanation_importance.json"


def log_training_insights(
    spec: ServiceSpec,
    model: Any,
    X_train: pd.DataFrame,
    X_test: pd.DataFrame,
    out_dir: Path,
    seed: int,
    source: str = "training split",
) -> DriftReference:
    """Log to the active MLflow run what monitoring and explanations need later:
    ``drift_reference.json`` (the training profile, next to the model) and the global
    explanation importance (mean |contribution| per field on hold-out rows, JSON + plot).
    ``model`` is the served model and ``X_train`` the rows it was fitted on (``source`` names them)."""
    import mlflow

    from portfolio.core.explain.shapley import TREE_SHAP, explain_frame, global_importance

    if spec.task == "classification":
        scores = np.asarray(model.predict_proba(X_train)[:, 1], dtype=float)
    else:
        scores = np.asarray(model.predict(X_train), dtype=float)
    threshold = getattr(model, "threshold", None)
    ref = DriftReference.from_frame(
        spec,
        X_train,
        scores=scores,
        threshold=None if threshold is None else float(threshold),
        source=source,
        seed=seed,
    )
    mlflow.log_dict(ref.to_dict(), REFERENCE_ARTIFACT)

    rows = X_test[spec.feature_names].sample(min(len(X_test), 1000), random_state=seed)
    background = ref.sample_frame(spec)
    try:
        exp = explain_frame(spec.task, model, rows, method=TREE_SHAP)
    except ValueError:  # sampling: ~700 model rows per explained row, so fewer rows
        exp = explain_frame(spec.task, model, rows.head(40), background=background, n_pairs=32, seed=seed)
    importance = global_importance(exp)
    mlflow.log_dict(
        {"method": exp.method, "rows": len(exp.values), "output": exp.output, "importance": importance},
        EXPLANATION_IMPORTANCE_ARTIFACT,
    )
    mlflow.log_artifact(
        str(_importance_plot(importance, exp, out_dir / "explanation_importance.png", spec)), "plots"
    )
    return ref


def _importance_plot(importance: Mapping[str, float], exp: Any, path: Path, spec: ServiceSpec) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(importance.items(), key=lambda kv: kv[1])[-20:]
    fig, ax = plt.subplots(figsize=(6, max(3, 0.3 * len(items))))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#2980b9")
    unit = "log-odds" if exp.output == "log_odds" else spec.target
    ax.set_xlabel(f"mean |contribution| ({unit})")
    ax.set_title(
        f"{spec.title}\n{exp.method.replace('_', ' ')} importance ({len(exp.values)} hold-out rows)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------- loading
class ReferenceUnavailable(LookupError):
    pass


def reference_cache_path(settings: Settings, name: str, version: str) -> Path:
    return settings.model_cache_dir / name / "references" / f"v{version}.json"


def load_reference(spec: ServiceSpec, settings: Settings, run_id: str | None, version: str) -> DriftReference:
    """The reference logged with a model version's training run, through the configured tracking
    URI (cached locally per version, so a running API keeps it when the server is unreachable)."""
    cached = reference_cache_path(settings, spec.name, version)
    if cached.exists():
        return DriftReference.from_dict(json.loads(cached.read_text()))
    if not run_id:
        raise ReferenceUnavailable(f"{spec.name} v{version} has no training run: no drift reference")
    import mlflow

    from portfolio.core import registry

    registry.configure(settings)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=tmp
            )
        except Exception as exc:
            raise ReferenceUnavailable(
                f"{spec.name} v{version}: no {REFERENCE_ARTIFACT} in run {run_id} ({exc}); "
                f"retrain with this version of the platform or pass --reference REF.csv"
            ) from exc
        data = json.loads(Path(path).read_text())
    ref = DriftReference.from_dict(data)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = cached.with_suffix(".partial")
    tmp_file.write_text(json.dumps(data))
    tmp_file.replace(cached)
    return ref


# ------------------------------------------------------------------------------------ batch files
class DriftInputError(ValueError):
    """A batch file that cannot be compared (unreadable, missing columns, no valid rows)."""


def read_batch(spec: ServiceSpec, path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Valid, typed rows of a CSV and the accounting of the invalid ones (never dropped silently:
    they are counted by reason in the report)."""
    from portfolio.core.data import read_raw_csv
    from portfolio.core.schema import validate_frame

    if not path.exists():
        raise DriftInputError(f"file not found: {path}")
    try:
        raw = read_raw_csv(path)
        result = validate_frame(raw, spec.fields)
    except Exception as exc:  # unreadable CSV, missing columns: a whole-file problem
        raise DriftInputError(f"{path}: {exc}") from exc
    valid = result.frame.loc[result.valid_mask, spec.feature_names]
    summary = result.summary()
    info = {
        "file": str(path),
        "rows_in_file": int(summary["rows"]),
        "invalid_rows": int(summary["invalid_rows"]),
        "invalid_by_reason": summary["by_reason"],
    }
    if len(valid) == 0:
        raise DriftInputError(f"{path}: no valid rows to compare ({summary['by_reason']})")
    return valid, info


def drift_from_files(
    spec: ServiceSpec,
    settings: Settings,
    current_path: Path,
    *,
    predictor: Any = None,
    reference_path: Path | None = None,
    thresholds: Thresholds = Thresholds(),
) -> dict[str, Any]:
    """``portfolio drift``: a CSV batch against the model's training reference (loaded from the
    predictor's training run through the registry) or against ``reference_path``. With a
    predictor, the report also compares the model's score distributions."""
    current, info = read_batch(spec, current_path)
    if reference_path is not None:
        ref_rows, ref_info = read_batch(spec, reference_path)
        ref = DriftReference.from_frame(
            spec,
            ref_rows,
            scores=predictor.scores_frame(ref_rows) if predictor is not None else None,
            threshold=predictor.threshold if predictor is not None else None,
            source=f"file {reference_path} ({ref_info['invalid_rows']} invalid rows excluded)",
        )
    elif predictor is not None:
        ref = load_reference(spec, settings, predictor.loaded.run_id, predictor.version)
    else:
        raise DriftInputError("no reference: give --reference REF.csv or train a model first")
    scores = predictor.scores_frame(current) if predictor is not None else None
    report = drift_report(spec, ref, current, scores=scores, thresholds=thresholds)
    report["current"] |= info
    report["model_version"] = predictor.version if predictor is not None else None
    return report


# -------------------------------------------------------------------------------------------- HTML
def write_html(report: Mapping[str, Any], path: Path) -> Path:
    """A standalone (offline) HTML page: summary, the per-feature table, one histogram per
    feature (reference vs current share per bin) and the prediction distribution."""
    import plotly.graph_objects as go
    import plotly.io as pio

    figs: list[str] = []
    panels = [(name, r) for name, r in report["features"].items()]
    if "prediction" in report:
        panels.append(("prediction (model score)", report["prediction"] | {"drifted": False}))
    for i, (name, r) in enumerate(panels):
        fig = go.Figure(
            [
                go.Bar(
                    name="reference (training)", x=r["bins"], y=r["reference_share"], marker_color="#7f8c8d"
                ),
                go.Bar(
                    name="current",
                    x=r["bins"],
                    y=r["current_share"],
                    marker_color="#c0392b" if r.get("drifted") else "#2980b9",
                ),
            ]
        )
        verdict = "DRIFTED" if r.get("drifted") else "no drift"
        fig.update_layout(
            title=f"{name}: PSI {r['psi']:.3f}"
            + (f", p={r['pvalue']:.2g}" if "pvalue" in r else "")
            + f" ({verdict})",
            barmode="group",
            height=320,
            margin={"l": 40, "r": 20, "t": 50, "b": 60},
            yaxis_title="share of rows",
        )
        figs.append(pio.to_html(fig, full_html=False, include_plotlyjs="inline" if i == 0 else False))
    rows = "".join(
        f"<tr class='{'bad' if r['drifted'] else ''}'><td>{html.escape(n)}</td><td>{r['type']}</td>"
        f"<td>{r['method']}</td><td>{r['psi']:.4f}</td><td>{r['pvalue']:.3g}</td>"
        f"<td>≥ {r['psi_threshold']:g} and p &lt; {r['pvalue_threshold']:.2g}</td>"
        f"<td>{'yes' if r['drifted'] else 'no'}</td></tr>"
        for n, r in report["features"].items()
    )
    status = "DRIFT DETECTED" if report["drift_detected"] else "No drift detected"
    colour = "#c0392b" if report["drift_detected"] else "#27ae60"
    invalid = report["current"].get("invalid_rows", 0)
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Drift report: {html.escape(report["service"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}tr.bad td{{background:#fadbd8}}
.status{{font-size:1.4em;font-weight:bold;color:{colour}}}</style>
</head><body>
<h1>Data drift: {html.escape(report["service"])}</h1>
<p class="status">{status}: {report["n_drifted"]} of {len(report["features"])} features drifted
{html.escape(", ".join(report["drifted_features"]))}</p>
<p>Current batch: {report["current"]["rows"]} valid rows ({invalid} invalid rows excluded).
Reference: {html.escape(str(report["reference"]["source"]))}, {report["reference"]["rows"]} rows
({html.escape(str(report["reference"]["created"]))}). Generated {html.escape(report["created"])}.</p>
<p>Rule: {html.escape(report["thresholds"]["rule"])} (PSI threshold {report["thresholds"]["psi"]},
alpha {report["thresholds"]["alpha"]} over {len(report["features"])} features). Numeric features:
PSI on training deciles + Kolmogorov-Smirnov; categorical: PSI + chi-square.</p>
<table><tr><th>feature</th><th>type</th><th>method</th><th>PSI</th><th>p-value</th><th>threshold</th>
<th>drifted</th></tr>{rows}</table>
{"".join(figs)}
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ live window
class LiveMonitor:
    """A bounded window of the most recent inputs and scores of a running API.

    ``observe`` is all a request pays: one append of the request's columns (each field's
    values, as the endpoint already holds them), no copy and no statistics; ``evaluate``
    computes the drift scores from the last ``window`` rows when ``/metrics`` is scraped, and
    caches them until new rows arrive. Columns, not records: a batch of 1,000 records needs
    no per-record work here, and the statistics are per field anyway. One window per
    process: with several workers each reports its own share of the traffic."""

    def __init__(self, spec: ServiceSpec, window: int = 1000, thresholds: Thresholds = Thresholds()):
        self.spec = spec
        self.window = window
        self.thresholds = thresholds
        # (each field's values, the scores) per observed request, oldest first; chunks wholly
        # older than the last ``window`` rows are dropped as new ones arrive.
        self._chunks: deque[tuple[Mapping[str, Sequence[Any]], Sequence[float]]] = deque()
        self._rows = 0  # rows held in _chunks (at most window + one request's rows - 1)
        self._seen = 0
        self._lock = threading.Lock()
        self.reference: DriftReference | None = None
        self.reference_version: str | None = None
        self.reference_error: str | None = None
        self._retry_at = 0.0
        self._cache: tuple[tuple[int, str | None], dict[str, Any]] | None = None
        self._background: tuple[DriftReference, pd.DataFrame] | None = None
        self.evaluations = 0  # how often the statistics were computed (scrapes with new data)

    def observe(self, values: Mapping[str, Sequence[Any]], scores: Sequence[float]) -> None:
        """One request's rows: ``values`` maps every field to its values (row order), ``scores``
        holds the model's score of each row. Neither is copied: the caller must not change
        them afterwards."""
        n = len(scores)
        if not n:
            return
        with self._lock:
            self._chunks.append((values, scores))
            self._rows += n
            self._seen += n
            while self._rows - len(self._chunks[0][1]) >= self.window:
                self._rows -= len(self._chunks.popleft()[1])

    def __len__(self) -> int:
        return min(self._rows, self.window)

    def _window(self) -> tuple[dict[str, list[Any]], list[float]]:
        """The last ``window`` rows, as columns (call with the lock held)."""
        skip = self._rows - min(self._rows, self.window)
        chunks = list(self._chunks)
        columns = {
            f.name: list(itertools.chain.from_iterable(v[f.name] for v, _ in chunks))[skip:]
            for f in self.spec.fields
        }
        return columns, list(itertools.chain.from_iterable(s for _, s in chunks))[skip:]

    def needs_reference(self, version: str) -> bool:
        return self.reference_version != version and time.monotonic() >= self._retry_at

    def sync(self, spec: ServiceSpec, settings: Settings, version: str, run_id: str | None) -> None:
        """Load the reference of the served model version (once; retried at most every minute)."""
        try:
            ref = load_reference(spec, settings, run_id, version)
        except Exception as exc:
            self.reference_error = str(exc)
            self._retry_at = time.monotonic() + 60.0
            log.warning("%s v%s: drift reference unavailable: %s", spec.name, version, exc)
            return
        self.reference, self.reference_version, self.reference_error = ref, version, None

    def background(self) -> pd.DataFrame | None:
        """The reference's training rows, typed (the background of sampling explanations)."""
        ref = self.reference
        if ref is None:
            return None
        if self._background is None or self._background[0] is not ref:
            self._background = (ref, ref.sample_frame(self.spec))
        return self._background[1]

    def explain(self, predictor: Any, settings: Settings, record: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /explain``: the prediction plus additive per-field contributions (explain/shapley.py).
        Raises ReferenceUnavailable when the model needs background rows and none are loaded."""
        from portfolio.core.explain.shapley import explain_frame, explanation_body

        if self.needs_reference(predictor.version):
            self.sync(self.spec, settings, predictor.version, predictor.loaded.run_id)
        background = self.background() if self.reference_version == predictor.version else None
        X = typed_frame(pd.DataFrame([dict(record)]), self.spec.fields)
        try:
            exp = explain_frame(
                self.spec.task, predictor.model, X, score=predictor.scores_frame, background=background
            )
        except ValueError as exc:
            raise ReferenceUnavailable(
                f"cannot explain: {exc} ({self.reference_error or 'no reference'})"
            ) from exc
        out = predictor.predict_records([dict(record)])[0]
        if self.spec.task == "classification":
            out["threshold"] = predictor.threshold
        body = explanation_body(exp, X)
        for item in body["contributions"]:
            item["value"] = record.get(item["feature"])  # as sent (the typed frame has floats)
        return out | body

    def evaluate(self) -> dict[str, Any]:
        """Drift of the window against the reference (cached until the window changes)."""
        with self._lock:
            key = (self._seen, self.reference_version)
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1]
            columns, listed = self._window()
            scores = np.asarray(listed, dtype=float)
            self.evaluations += 1
        rows = len(scores)
        result: dict[str, Any] = {"rows": rows, "features": {}, "prediction": {}}
        ref = self.reference
        if rows:
            result["prediction"]["mean"] = float(np.nanmean(scores))
            for q in (0.1, 0.5, 0.9):
                result["prediction"][f"q{q}"] = float(np.nanquantile(scores, q))
        if ref is not None and rows:
            pred = ref.data.get("prediction") or {}
            threshold = pred.get("threshold")
            if self.spec.task == "classification" and threshold is not None:
                result["prediction"]["positive_rate"] = float(np.mean(scores >= threshold))
            if pred:
                result["prediction"]["psi"] = psi(*_bin_counts(pred, scores)[1:])
            enough = rows >= self.thresholds.min_rows
            feats = ref.features
            sample = ref.data.get("sample") or {}
            for f in self.spec.fields:
                if f.name not in feats:
                    continue
                col = columns[f.name]
                values: Any = numeric_values(col, f) if _is_numeric(f) else col
                r = compare_feature(
                    f.name,
                    f,
                    feats[f.name],
                    values,
                    sample.get(f.name),
                    self.thresholds,
                    len(self.spec.fields),
                )
                result["features"][f.name] = {
                    "psi": r["psi"],
                    "pvalue": r["pvalue"],
                    "drifted": bool(r["drifted"] and enough),
                }
        with self._lock:
            self._cache = (key, result)
        return result


class DriftCollector:
    """Prometheus collector: evaluates the live window at scrape time."""

    def __init__(self, service: str, monitor: LiveMonitor):
        self.service = service
        self.monitor = monitor

    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def _families(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        return [
            GaugeMetricFamily(
                "portfolio_drift_window_rows", "Records in the drift window", labels=["service"]
            ),
            GaugeMetricFamily(
                "portfolio_drift_reference_loaded",
                "1 when the served model's training reference is loaded",
                labels=["service"],
            ),
            GaugeMetricFamily(
                "portfolio_feature_drift_psi",
                "PSI of each input feature, window vs training reference",
                labels=["service", "feature"],
            ),
            GaugeMetricFamily(
                "portfolio_feature_drift_pvalue",
                "p-value of the feature's drift test (KS numeric, chi-square categorical)",
                labels=["service", "feature"],
            ),
            GaugeMetricFamily(
                "portfolio_feature_drifted",
                "1 when the feature drifted (PSI and test thresholds, enough rows)",
                labels=["service", "feature"],
            ),
            GaugeMetricFamily("portfolio_drift_detected", "1 when any feature drifted", labels=["service"]),
            GaugeMetricFamily(
                "portfolio_prediction_score",
                "Model score in the window (mean, quantiles)",
                labels=["service", "stat"],
            ),
            GaugeMetricFamily(
                "portfolio_prediction_positive_rate",
                "Share of positive decisions in the window (classifiers)",
                labels=["service"],
            ),
            GaugeMetricFamily(
                "portfolio_prediction_reference_positive_rate",
                "Share of positive decisions on the training rows (classifiers)",
                labels=["service"],
            ),
            GaugeMetricFamily(
                "portfolio_prediction_drift_psi",
                "PSI of the model score, window vs training scores",
                labels=["service"],
            ),
        ]

    def collect(self) -> Iterator[Any]:
        fams = {f.name: f for f in self._families()}
        s = self.service
        result = self.monitor.evaluate()
        fams["portfolio_drift_window_rows"].add_metric([s], result["rows"])
        fams["portfolio_drift_reference_loaded"].add_metric([s], 1.0 if self.monitor.reference else 0.0)
        any_drift = False
        for name, r in result["features"].items():
            fams["portfolio_feature_drift_psi"].add_metric([s, name], r["psi"])
            fams["portfolio_feature_drift_pvalue"].add_metric([s, name], r["pvalue"])
            fams["portfolio_feature_drifted"].add_metric([s, name], 1.0 if r["drifted"] else 0.0)
            any_drift = any_drift or r["drifted"]
        fams["portfolio_drift_detected"].add_metric([s], 1.0 if any_drift else 0.0)
        pred = result["prediction"]
        for stat in ("mean", "q0.1", "q0.5", "q0.9"):
            if stat in pred:
                fams["portfolio_prediction_score"].add_metric([s, stat], pred[stat])
        if "positive_rate" in pred:
            fams["portfolio_prediction_positive_rate"].add_metric([s], pred["positive_rate"])
        ref_pred = (self.monitor.reference.data.get("prediction") if self.monitor.reference else None) or {}
        if ref_pred.get("positive_rate") is not None:
            fams["portfolio_prediction_reference_positive_rate"].add_metric([s], ref_pred["positive_rate"])
        if "psi" in pred:
            fams["portfolio_prediction_drift_psi"].add_metric([s], pred["psi"])
        return iter(fams.values())
