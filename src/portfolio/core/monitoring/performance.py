"""`portfolio performance`: realized metrics of the served models on the logged predictions that
have a label (``feedback``), per model version, beside each version's own hold-out figures.

Metrics come from what the API answered (the logged ``outputs``), through the same functions and
bootstrap as training's evaluation (``training.evaluation``): classifiers ``roc_auc``, ``pr_auc``,
``precision``, ``recall``, ``f1``, ``accuracy``, ``brier`` at the threshold the answer carried;
regressors ``rmse``, ``mae``, ``r2``, ``interval_coverage`` (share of true values inside the
answered interval) and ``interval_width``, each with a 95% bootstrap interval.

``degraded`` (per version; the report's is that of its ``model_version``): the realized 95%
interval of the service's primary metric lies entirely on the worse side of the version's hold-out
figure moved by ``tolerance`` (default 5%): for a metric where higher is better,
``ci_high < holdout x (1 - tolerance)``; where lower is better (RMSE), ``ci_low > holdout x
(1 + tolerance)``. Chance alone therefore rarely flags it; with no hold-out figure, or a metric
that cannot be computed (one class only), it is false and ``degraded_reason`` says why.

Shadow lines (the ``@challenger``'s outputs on the same records, ``PORTFOLIO_SHADOW``) never enter
these figures. ``comparisons`` sets champion and challenger side by side on the labelled records
both scored (``compare_on_same_rows``): each version's metrics with intervals, the paired
difference of the primary metric and the champion gate's verdict on those rows, which
``portfolio promote --if-better`` acts on.

Prometheus: the report is also kept as ``<prediction log>/<service>/performance.json``; each API
serves it from there at ``/metrics`` (``RealizedCollector``: ``portfolio_realized_metric``,
``portfolio_realized_rows``, ``portfolio_realized_degraded``), so every worker exposes the latest
report without any state of its own.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from portfolio.core import metrics as mx
from portfolio.core.monitoring.feedback import read_labels
from portfolio.core.monitoring.predictions import read_log
from portfolio.core.spec import ServiceSpec

LOWER_IS_BETTER = {"rmse", "mae", "brier", "interval_width"}


def latest_path(log_dir: Path, service: str) -> Path:
    """Where the latest performance report of a service is kept (read by the API's /metrics)."""
    return Path(log_dir) / service / "performance.json"


def joined_rows(
    log_dir: Path, service: str, since: datetime | None = None, shadow: bool | None = False
) -> list[dict[str, Any]]:
    """Logged predictions that have a label, in log order, each with ``y``.

    Args:
        log_dir: The prediction log folder.
        service: The service's name.
        since: Only predictions made at or after this time (UTC).
        shadow: False: the answers given; True: the challenger's shadow lines; None: both.

    Returns:
        The joined log records.
    """
    labels = read_labels(log_dir, service)
    cutoff = since.isoformat() if since is not None else ""
    rows = []
    for record in read_log(log_dir, service):
        y = labels.get(record["request_id"])
        if y is None or record["ts"] < cutoff:
            continue
        if shadow is None or bool(record.get("shadow", False)) == shadow:
            rows.append(record | {"y": y})
    return rows


def realized_metrics(
    spec: ServiceSpec, rows: list[dict[str, Any]], rounds: int, seed: int
) -> dict[str, dict[str, float]]:
    """The metrics, with 95% bootstrap intervals, of joined rows as answered.

    Args:
        spec: The service.
        rows: Joined log records of one model version.
        rounds: Bootstrap resamples.
        seed: The bootstrap's seed.

    Returns:
        metric → {value, ci_low, ci_high}.
    """
    y = np.array([r["y"] for r in rows], dtype=float)
    metrics = spec.strategy.realized_metrics(spec, y, [r["outputs"] for r in rows], rounds, seed)
    return {_name(k): v for k, v in metrics.items()}


def paired_rows(
    rows: list[dict[str, Any]],
) -> dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Labelled records scored by both the served version and a shadow challenger, by
    (served version, challenger version); a record id's last line of each kind counts.

    Args:
        rows: Joined log records, answers and shadow lines (``joined_rows(..., shadow=None)``).

    Returns:
        (served version, challenger version) → [(served record, shadow record)], in log order.
    """
    served: dict[str, dict[str, Any]] = {}
    shadow: dict[str, dict[str, Any]] = {}
    for r in rows:
        (shadow if r.get("shadow", False) else served)[r["request_id"]] = r
    pairs: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for rid, s in served.items():
        c = shadow.get(rid)
        if c is not None:
            pairs.setdefault((str(s["model_version"]), str(c["model_version"])), []).append((s, c))
    return pairs


def compare_on_same_rows(
    spec: ServiceSpec,
    pairs: list[tuple[dict[str, Any], dict[str, Any]]],
    rounds: int,
    seed: int,
) -> dict[str, Any]:
    """Champion and challenger on the same labelled records: both versions' metrics with 95%
    bootstrap intervals, the paired difference of the primary metric (challenger - champion, one
    resample of the rows for both) and the champion gate's verdict on these rows
    (``ServiceSpec.prefers``: the challenger's primary metric is not worse).

    Args:
        spec: The service.
        pairs: (served record, shadow record) of one version pair, each with ``y``.
        rounds: Bootstrap resamples.
        seed: The bootstrap's seed.

    Returns:
        The comparison: versions, ``rows``, ``champion``/``challenger`` metrics, ``difference``,
        ``challenger_wins`` and ``reason``.
    """
    served = [s for s, _ in pairs]
    shadow = [c for _, c in pairs]
    champion = realized_metrics(spec, served, rounds, seed)
    challenger = realized_metrics(spec, shadow, rounds, seed)
    metric = spec.primary_metric
    a, b = champion[metric]["value"], challenger[metric]["value"]
    result: dict[str, Any] = {
        "champion_version": str(served[0]["model_version"]),
        "challenger_version": str(shadow[0]["model_version"]),
        "rows": len(pairs),
        "primary_metric": metric,
        "champion": champion,
        "challenger": challenger,
        "difference": _paired_difference(spec, served, shadow, rounds, seed),
        "rule": f"the champion gate's: the challenger's {metric} is not "
        f"{'lower' if spec.primary_higher_is_better else 'higher'} than the champion's on the same rows",
    }
    if not (math.isfinite(a) and math.isfinite(b)):
        return result | {
            "challenger_wins": False,
            "reason": f"{metric} cannot be computed on these {len(pairs)} rows (one class only?)",
        }
    wins = spec.prefers(b, a)
    word = "not worse than" if wins else "worse than"
    return result | {
        "challenger_wins": wins,
        "reason": f"challenger v{result['challenger_version']} {metric} {b:.4f} is {word} champion "
        f"v{result['champion_version']} {a:.4f} on the same {len(pairs)} labelled rows",
    }


def _paired_difference(
    spec: ServiceSpec, served: list[dict[str, Any]], shadow: list[dict[str, Any]], rounds: int, seed: int
) -> dict[str, float]:
    metric = spec.primary_metric
    y = np.array([r["y"] for r in served], dtype=float)
    diff, stratify = spec.strategy.metric_difference(
        spec, metric, y, [r["outputs"] for r in served], [r["outputs"] for r in shadow]
    )
    every = np.arange(len(y))
    low, high = mx.bootstrap_intervals(diff, len(y), rounds, seed, stratify)["d"]
    return {"value": diff(every)["d"], "ci_low": low, "ci_high": high}


def comparisons(
    spec: ServiceSpec, rows: list[dict[str, Any]], rounds: int, seed: int
) -> list[dict[str, Any]]:
    """``compare_on_same_rows`` for every (served, challenger) version pair in ``rows``.

    Args:
        spec: The service.
        rows: Joined answers and shadow lines.
        rounds: Bootstrap resamples.
        seed: The bootstrap's seed.

    Returns:
        One comparison per pair, most rows first.
    """
    pairs = paired_rows(rows)
    ordered = sorted(pairs.values(), key=len, reverse=True)
    return [compare_on_same_rows(spec, p, rounds, seed) for p in ordered]


def _name(metric: str) -> str:
    return "interval_coverage" if metric == "coverage" else metric


def holdout_metrics(service: str, version: str) -> dict[str, dict[str, float]] | None:
    """The hold-out metrics a registered version's training run logged (None when unreachable)."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient()
        run_id = client.get_model_version(service, version).run_id
        flat = client.get_run(run_id).data.metrics if run_id else {}
    except Exception:
        return None
    return {_name(k): v for k, v in mx.unflatten("test", flat).items()} or None


def degraded(
    spec: ServiceSpec,
    realized: Mapping[str, Mapping[str, float]],
    holdout: Mapping[str, Mapping[str, float]] | None,
    tolerance: float,
) -> tuple[bool, str]:
    """The documented rule (module docstring) on the primary metric; (degraded, why)."""
    metric = spec.primary_metric
    now = realized.get(metric)
    then = (holdout or {}).get(metric)
    if then is None:
        return False, f"no hold-out {metric} to compare with"
    if now is None or not all(math.isfinite(now[k]) for k in ("value", "ci_low", "ci_high")):
        return False, f"realized {metric} cannot be computed on these rows"
    base = then["value"]
    if metric in LOWER_IS_BETTER:
        limit = base * (1 + tolerance)
        bad = now["ci_low"] > limit
        rule = f"realized {metric} 95% CI low {now['ci_low']:.4g} {'>' if bad else '<='} {limit:.4g}"
    else:
        limit = base * (1 - tolerance)
        bad = now["ci_high"] < limit
        rule = f"realized {metric} 95% CI high {now['ci_high']:.4g} {'<' if bad else '>='} {limit:.4g}"
    return bad, f"{rule} (hold-out {base:.4g}, tolerance {tolerance:.0%})"


def performance_report(
    spec: ServiceSpec,
    log_dir: Path,
    *,
    since: datetime | None = None,
    rounds: int = 1000,
    seed: int = 42,
    tolerance: float = 0.05,
) -> dict[str, Any]:
    """``portfolio performance``: realized metrics over the joined rows, per model version.

    Args:
        spec: The service.
        log_dir: The prediction log folder.
        since: Only predictions made at or after this time.
        rounds: Bootstrap resamples.
        seed: The bootstrap's seed.
        tolerance: The ``degraded`` rule's tolerance (a share of the hold-out figure).

    Returns:
        The report; top level for ``model_version`` (the version of the latest joined
        prediction), every version under ``versions``. Raises ValueError when no row is joined.
    """
    every = joined_rows(log_dir, spec.name, since, shadow=None)
    rows = [r for r in every if not r.get("shadow", False)]
    if not rows:
        raise ValueError(
            f"{spec.name}: no logged prediction has a label"
            + (f" since {since.isoformat()}" if since else "")
            + " (run `portfolio feedback` first)"
        )
    by_version: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_version.setdefault(str(r["model_version"]), []).append(r)
    versions = {}
    for version, vrows in by_version.items():
        realized = realized_metrics(spec, vrows, rounds, seed)
        holdout = holdout_metrics(spec.name, version)
        bad, why = degraded(spec, realized, holdout, tolerance)
        versions[version] = {
            "rows": len(vrows),
            "first": min(r["ts"] for r in vrows),
            "last": max(r["ts"] for r in vrows),
            "metrics": realized,
            "holdout_metrics": holdout,
            "degraded": bad,
            "degraded_reason": why,
        }
    current = str(max(rows, key=lambda r: r["ts"])["model_version"])  # files of processes interleave
    top = versions[current]
    return _finite(
        {
            "service": spec.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "since": since.isoformat() if since else None,
            "model_version": current,
            "rows": len(rows),
            "primary_metric": spec.primary_metric,
            "metrics": top["metrics"],
            "holdout_metrics": top["holdout_metrics"],
            "degraded": top["degraded"],
            "degraded_reason": top["degraded_reason"],
            "rule": f"degraded when the realized 95% CI of {spec.primary_metric} lies entirely worse than "
            f"the hold-out figure x (1 {'+' if spec.primary_metric in LOWER_IS_BETTER else '-'} "
            f"{tolerance:g})",
            "bootstrap_rounds": rounds,
            "versions": versions,
            # Champion vs challenger on the same labelled records (shadow lines), per pair.
            "comparisons": comparisons(spec, every, rounds=rounds, seed=seed),
        }
    )


def _finite(value: Any) -> Any:
    """NaN (e.g. ROC-AUC of one class) as null: the report stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def save_latest(report: Mapping[str, Any], log_dir: Path) -> Path:
    """Keep the report where the service's APIs read it for /metrics."""
    path = latest_path(log_dir, report["service"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.partial")
    tmp.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    tmp.replace(path)  # atomic: a scrape never reads half a report
    return path


class RealizedCollector:
    """Prometheus collector: the latest performance report of a service, read at scrape time
    (re-read only when the file changed)."""

    def __init__(self, service: str, path: Path):
        self.service = service
        self.path = path
        self._stamp: float | None = None
        self._report: dict[str, Any] | None = None

    def describe(self) -> Iterator[Any]:
        return iter(self._families(None))

    def collect(self) -> Iterator[Any]:
        return iter(self._families(self._load()))

    def _load(self) -> dict[str, Any] | None:
        try:
            stamp = self.path.stat().st_mtime
        except OSError:
            return None
        if stamp != self._stamp:
            try:
                self._report, self._stamp = orjson.loads(self.path.read_bytes()), stamp
            except (OSError, orjson.JSONDecodeError):
                return self._report
        return self._report

    def _families(self, report: Mapping[str, Any] | None) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        metric = GaugeMetricFamily(
            "portfolio_realized_metric",
            "Realized metric on labelled predictions (latest `portfolio performance`), value and 95% CI",
            labels=["model_service", "model_version", "metric", "stat"],
        )
        rows = GaugeMetricFamily(
            "portfolio_realized_rows",
            "Labelled predictions in the latest report",
            labels=["model_service", "model_version"],
        )
        bad = GaugeMetricFamily(
            "portfolio_realized_degraded",
            "1 when the latest report finds the version degraded (rule in the report)",
            labels=["model_service", "model_version"],
        )
        for version, v in ((report or {}).get("versions") or {}).items():
            rows.add_metric([self.service, version], v["rows"])
            bad.add_metric([self.service, version], 1.0 if v["degraded"] else 0.0)
            for name, stats in v["metrics"].items():
                for stat in ("value", "ci_low", "ci_high"):
                    if stats.get(stat) is not None:
                        metric.add_metric([self.service, version, name, stat], stats[stat])
        return [metric, rows, bad]


# -------------------------------------------------------------------------------------------- HTML
def write_html(report: Mapping[str, Any], path: Path) -> Path:
    """A standalone (offline) HTML page like the drift report: the verdict, a table per version
    (realized value and 95% CI beside the hold-out figure) and a chart of both."""
    import plotly.graph_objects as go
    import plotly.io as pio

    sections = []
    for i, (version, v) in enumerate(report["versions"].items()):
        names = list(v["metrics"])
        hold = v["holdout_metrics"] or {}
        fig = go.Figure()
        real = [v["metrics"][n] for n in names]
        fig.add_bar(
            name="realized",
            x=names,
            y=[m["value"] for m in real],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [(m["ci_high"] or 0) - (m["value"] or 0) for m in real],
                "arrayminus": [(m["value"] or 0) - (m["ci_low"] or 0) for m in real],
            },
            marker_color="#c0392b" if v["degraded"] else "#2980b9",
        )
        fig.add_bar(
            name="hold-out",
            x=names,
            y=[(hold.get(n) or {}).get("value") for n in names],
            marker_color="#7f8c8d",
        )
        fig.update_layout(title=f"v{version}: realized vs hold-out", barmode="group", height=360)
        chart = pio.to_html(fig, full_html=False, include_plotlyjs="inline" if i == 0 else False)
        table = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{_fmt(m['value'])}</td>"
            f"<td>[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]</td>"
            f"<td>{_fmt((hold.get(n) or {}).get('value'))}</td></tr>"
            for n, m in v["metrics"].items()
        )
        verdict = "DEGRADED" if v["degraded"] else "not degraded"
        sections.append(
            f"<h2>Model version {html.escape(version)}: {v['rows']} labelled predictions "
            f"({html.escape(v['first'])} to {html.escape(v['last'])})</h2>"
            f"<p class='{'bad' if v['degraded'] else 'ok'}'>{verdict}: "
            f"{html.escape(v['degraded_reason'])}</p>"
            "<table><tr><th>metric</th><th>realized</th><th>95% CI</th><th>hold-out</th></tr>"
            f"{table}</table>{chart}"
        )
    for comp in report.get("comparisons") or []:
        champ, chal = comp["champion"], comp["challenger"]
        rows_html = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{_fmt(champ[n]['value'])} [{_fmt(champ[n]['ci_low'])}, "
            f"{_fmt(champ[n]['ci_high'])}]</td><td>{_fmt(chal[n]['value'])} [{_fmt(chal[n]['ci_low'])}, "
            f"{_fmt(chal[n]['ci_high'])}]</td></tr>"
            for n in champ
        )
        d = comp["difference"]
        sections.append(
            f"<h2>Champion v{html.escape(comp['champion_version'])} vs challenger "
            f"v{html.escape(comp['challenger_version'])} on the same {comp['rows']} labelled rows</h2>"
            f"<p class='{'ok' if comp['challenger_wins'] else 'bad'}'>{html.escape(comp['reason'])}; "
            f"{html.escape(comp['primary_metric'])} difference (challenger - champion) {_fmt(d['value'])} "
            f"[{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}]</p>"
            "<table><tr><th>metric</th><th>champion [95% CI]</th><th>challenger [95% CI]</th></tr>"
            f"{rows_html}</table>"
        )
    status = "DEGRADED" if report["degraded"] else "Not degraded"
    since = f", predictions since {html.escape(report['since'])}" if report["since"] else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Realized performance: {html.escape(report["service"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}.bad{{color:#c0392b;font-weight:bold}}
.ok{{color:#27ae60;font-weight:bold}}</style></head><body>
<h1>Realized performance: {html.escape(report["service"])}</h1>
<p class="{"bad" if report["degraded"] else "ok"}">{status} (v{html.escape(report["model_version"])},
{report["rows"]} labelled predictions in all)</p>
<p>Rule: {html.escape(report["rule"])}. Intervals: {report["bootstrap_rounds"]} bootstrap resamples.
Generated {html.escape(report["created"])}{since}.</p>
{"".join(sections)}
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
