"""`portfolio drift`: a CSV batch against the champion's training reference, as a JSON report and
a standalone HTML page with plots.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from portfolio.core.monitoring.drift import Thresholds, drift_report
from portfolio.core.monitoring.reference import DriftReference, load_reference
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec


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
