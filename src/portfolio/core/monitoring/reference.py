"""The training reference profile saved with each model, and how a server or the CLI finds it.

Reference (``drift_reference.json``, logged as an artifact of the training run that produced the
model, so it is found through the registry like the model itself): for every input field a
histogram of the training rows (deciles for continuous numbers, one bin per value for discrete
numbers with at most 20 distinct values, one bin per category, plus a missing bin), a joint sample
of up to 2,000 training rows (for the KS test and as the background of explanations) and the same
histogram for the model's training scores (prediction drift).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from portfolio.core.schema import Field
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec

REFERENCE_ARTIFACT = "drift_reference.json"


FORMAT = "portfolio-drift-reference/1"


MISSING = "(missing)"


OTHER = "(other)"


DISCRETE_MAX_VALUES = 20


TOP_CATEGORIES = 30


NUMERIC_BINS = 10


SAMPLE_ROWS = 2000


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


def bin_counts(profile: Mapping[str, Any], values: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
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
            # Probabilities are profiled on [0, 1]; values on their own range.
            probability = spec.strategy.score_kind == "probability"
            pred = _score_profile(s) if probability else _numeric_profile(s)
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


# ----------------------------------------------------------------------------------------- loading
class ReferenceUnavailable(LookupError):
    pass


def reference_cache_path(settings: Settings, name: str, version: str) -> Path:
    return settings.model_cache_dir / name / "references" / f"v{version}.json"


def load_reference(spec: ServiceSpec, settings: Settings, run_id: str | None, version: str) -> DriftReference:
    """The reference logged with a model version's training run, through the configured tracking
    URI (cached locally per version, so a running API keeps it when the server is unreachable)."""
    cached = reference_cache_path(settings, spec.name, version)
    if not cached.exists():
        download_reference(spec.name, settings, run_id, version)
    return DriftReference.from_dict(json.loads(cached.read_text()))


def download_reference(name: str, settings: Settings, run_id: str | None, version: str) -> Path:
    """Download the reference of ``name`` version ``version`` (logged with its training run
    ``run_id``) into the local cache once; its path there. Raises ``ReferenceUnavailable``."""
    cached = reference_cache_path(settings, name, version)
    if cached.exists():
        return cached
    if not run_id:
        raise ReferenceUnavailable(f"{name} v{version} has no training run: no drift reference")
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
                f"{name} v{version}: no {REFERENCE_ARTIFACT} in run {run_id} ({exc}); "
                f"retrain with this version of the platform or pass --reference REF.csv"
            ) from exc
        data = json.loads(Path(path).read_text())
    DriftReference.from_dict(data)  # a reference this code cannot read is not cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = cached.with_suffix(".partial")
    tmp_file.write_text(json.dumps(data))
    tmp_file.replace(cached)
    return cached


def _score_profile(s: np.ndarray) -> dict[str, Any]:
    """Classifier probabilities: deciles of the training scores as bins (never 'discrete')."""
    prof = _numeric_profile(s)
    if prof["discrete"]:  # a score with few distinct values: still bin by deciles
        edges = np.unique(np.quantile(s, np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, s, side="right"), minlength=len(edges) + 1)
        prof |= {"discrete": False, "values": None, "edges": edges.tolist(), "counts": counts.tolist()}
    return prof
