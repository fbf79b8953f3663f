"""Per-group report of a classifier's decisions (the spec's ``fairness_groups``), computed on the
hold-out rows at training time, logged to MLflow (metrics + ``fairness.json``) and written into
the model card.

For each group column and each of its groups: rows, actual positive rate (base rate), positive
rate of the decisions (selection rate), recall (true-positive rate) and precision; per metric the
ratio lowest / highest across groups ("disparity ratio"; 1 = parity). Ratios below 0.8 are
flagged (the "four-fifths" rule of thumb). Groups with fewer than ``min_group_rows`` hold-out rows
are listed but left out of the ratios, because their rates are too noisy to compare; a metric that
is undefined for a group (recall without positives, precision without positive decisions) is
null. Numeric group columns with many values (e.g. age) are compared by quartile.

This describes the model's behaviour across groups; it is not a verdict. The model card says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

METRICS = ("positive_rate", "recall", "precision")
FOUR_FIFTHS = 0.8


def _groups(values: pd.Series) -> pd.Series:
    """Group labels of a column: categories as text, small-integer codes as integers, other numbers
    by quartile; missing values form their own group."""
    if pd.api.types.is_numeric_dtype(values):
        present = values.dropna()
        if present.nunique() <= 10:
            labels = values.map(lambda v: "missing" if pd.isna(v) else f"{v:g}")
        else:
            bins = pd.qcut(values, 4, duplicates="drop")
            labels = bins.astype(object).map(lambda b: "missing" if pd.isna(b) else str(b))
        return labels.astype(str)
    return values.astype(object).where(values.notna(), "missing").astype(str)


def _rates(y: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    return {
        "positive_rate": float(pred.mean()) if len(pred) else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "precision": tp / (tp + fp) if tp + fp else None,
    }


def fairness_report(
    X: pd.DataFrame,
    y: Sequence[int] | np.ndarray,
    proba: Sequence[float] | np.ndarray,
    threshold: float,
    groups: Sequence[str],
    *,
    min_group_rows: int = 30,
) -> dict[str, Any]:
    """The per-group report (JSON-serialisable) of decisions ``proba >= threshold``."""
    y_arr = np.asarray(y).astype(int)
    pred = np.asarray(proba, dtype=float) >= threshold
    report: dict[str, Any] = {
        "threshold": float(threshold),
        "rows": len(y_arr),
        "min_group_rows": min_group_rows,
        "overall": {"base_rate": float(y_arr.mean()) if len(y_arr) else None} | _rates(y_arr, pred),
        "groups": {},
    }
    for col in groups:
        if col not in X.columns:
            raise KeyError(f"fairness group column {col!r} is not a feature")
        labels = _groups(X[col].reset_index(drop=True))
        by_group: dict[str, Any] = {}
        for g in sorted(labels.unique()):
            m = (labels == g).to_numpy()
            by_group[g] = {"rows": int(m.sum()), "base_rate": float(y_arr[m].mean())} | _rates(
                y_arr[m], pred[m]
            )
        compared = [g for g, v in by_group.items() if v["rows"] >= min_group_rows]
        ratios: dict[str, float | None] = {}
        for metric in METRICS:
            vals = [by_group[g][metric] for g in compared if by_group[g][metric] is not None]
            hi = max(vals) if vals else None
            ratios[metric] = (min(vals) / hi) if len(vals) >= 2 and hi else None
        report["groups"][col] = {
            "by_group": by_group,
            "compared_groups": compared,
            "ratio_min_max": ratios,
            "below_four_fifths": [m for m, r in ratios.items() if r is not None and r < FOUR_FIFTHS],
        }
    return report


def _metric_key(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_\-.]+", "_", text).strip("_")


def fairness_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics: ``fairness_<col>_<metric>_ratio`` and ``fairness_<col>_<group>_<metric>``."""
    out: dict[str, float] = {}
    for col, g in report["groups"].items():
        c = _metric_key(col)
        for metric, ratio in g["ratio_min_max"].items():
            if ratio is not None:
                out[f"fairness_{c}_{metric}_ratio"] = float(ratio)
        for group, vals in g["by_group"].items():
            for metric in (*METRICS, "base_rate"):
                if vals.get(metric) is not None:
                    out[f"fairness_{c}_{_metric_key(group)}_{metric}"] = float(vals[metric])
    return out


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def fairness_markdown(report: Mapping[str, Any]) -> list[str]:
    """The model card's fairness section."""
    lines = [
        "## Fairness (hold-out, per group)",
        "",
        f"Decisions at threshold {report['threshold']:.4f} on {report['rows']} hold-out rows. "
        "positive rate = share flagged; ratio = lowest / highest group (1 = parity; below "
        f"{FOUR_FIFTHS} is flagged). Groups under {report['min_group_rows']} rows are not compared. "
        "A gap describes the model's behaviour; it is not by itself a verdict: base rates differ "
        "between groups too.",
        "",
    ]
    for col, g in report["groups"].items():
        lines += [
            f"### {col}",
            "",
            "| group | rows | base rate | positive rate | recall | precision |",
            "|---|---|---|---|---|---|",
        ]
        for group, v in g["by_group"].items():
            lines.append(
                f"| {group} | {v['rows']} | {_pct(v['base_rate'])} | {_pct(v['positive_rate'])} | "
                f"{_pct(v['recall'])} | {_pct(v['precision'])} |"
            )
        r = g["ratio_min_max"]
        lines.append(
            f"| **ratio min/max** | | | {_pct(r['positive_rate'])} | {_pct(r['recall'])} | "
            f"{_pct(r['precision'])} |"
        )
        flagged = g["below_four_fifths"]
        lines += ["", f"Below four-fifths: {', '.join(flagged) if flagged else 'none'}.", ""]
    return lines


def log_fairness(
    spec: Any, X_test: pd.DataFrame, y_test: np.ndarray, proba: np.ndarray | None, threshold: float | None
) -> dict[str, Any] | None:
    """Compute the report for a classifier with ``fairness_groups`` and log it to the active MLflow
    run (``fairness.json`` + flat metrics). None when it does not apply."""
    # A regressor has neither probabilities nor a threshold.
    if not spec.fairness_groups or threshold is None or proba is None:
        return None
    import mlflow

    report = fairness_report(X_test, y_test, proba, threshold, spec.fairness_groups)
    mlflow.log_dict(report, "fairness.json")
    mlflow.log_metrics(fairness_metrics(report))
    return report
