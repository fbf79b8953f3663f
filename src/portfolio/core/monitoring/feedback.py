"""`portfolio feedback`: true outcomes that arrive later, joined to the prediction log by request id.

The labels file has the columns ``request_id,label``, the label in the raw target's own form
(``Exited`` 0/1, ``Churn`` Yes/No, the car's ``price``, ``is_ultra`` 0/1), parsed by the same rule
as training data (``data.parse_target``). Rows whose id the log does not hold (``unknown_ids``),
repeated ids (``duplicate_ids``: the last row wins) and rows without an id or with an unusable label
(``invalid_rows``, by reason) are counted in the report, never dropped silently.

Accepted labels are appended to ``<prediction log>/<service>/labels.jsonl``; when an id gets a
label again in a later file, the later one wins there too.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from portfolio.core.data import parse_target
from portfolio.core.monitoring.predictions import read_log
from portfolio.core.spec import ServiceSpec

COLUMNS = ("request_id", "label")


class FeedbackInputError(ValueError):
    """A labels file that cannot be used as a whole (missing, unreadable, wrong columns)."""


def labels_path(log_dir: Path, service: str) -> Path:
    """Where a service's accepted labels are kept."""
    return Path(log_dir) / service / "labels.jsonl"


def read_labels_file(spec: ServiceSpec, path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A labels CSV's usable rows (last row per id) and the accounting of the rest.

    Args:
        spec: The service whose target form the labels have.
        path: The CSV with columns request_id,label.

    Returns:
        (rows with ``request_id``, ``label`` as given, ``y`` as the model's target; counts).
    """
    if not path.exists():
        raise FeedbackInputError(f"file not found: {path}")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise FeedbackInputError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise FeedbackInputError(
            f"{path}: missing column(s) {', '.join(missing)}; expected request_id,label "
            f"(label as the raw {spec.target!r} column)"
        )
    ids = raw["request_id"].str.strip()
    y = parse_target(spec, raw["label"].str.strip())
    no_id = ids == ""
    bad_label = ~no_id & y.isna()
    reasons = {}
    if no_id.any():
        reasons["request_id: empty"] = int(no_id.sum())
    if bad_label.any():
        reasons[f"label: not a usable {spec.target} value"] = int(bad_label.sum())
    ok = ~no_id & ~bad_label
    rows = pd.DataFrame({"request_id": ids[ok], "label": raw["label"][ok], "y": y[ok]})
    duplicates = int(rows["request_id"].duplicated().sum())
    rows = rows.drop_duplicates("request_id", keep="last")
    counts = {
        "rows_in_file": len(raw),
        "invalid_rows": int((~ok).sum()),
        "invalid_by_reason": reasons,
        "duplicate_ids": duplicates,
    }
    return rows, counts


def record_feedback(spec: ServiceSpec, log_dir: Path, path: Path) -> dict[str, Any]:
    """Join a labels file to the service's logged predictions and keep the joined labels.

    Args:
        spec: The service.
        log_dir: The prediction log folder (``Settings.resolved_prediction_log_dir``).
        path: The labels CSV.

    Returns:
        The report: rows in the file, ``joined``, ``unknown_ids``, ``duplicate_ids``,
        ``invalid_rows`` (by reason) and where the labels went.
    """
    rows, counts = read_labels_file(spec, path)
    logged = {r["request_id"] for r in read_log(log_dir, spec.name)}
    known = rows["request_id"].isin(logged)
    joined = rows[known]
    target = labels_path(log_dir, spec.name)
    if len(joined):
        target.parent.mkdir(parents=True, exist_ok=True)
        received = datetime.now(UTC).isoformat(timespec="seconds")
        with target.open("ab") as fh:
            for rid, label, y in zip(joined["request_id"], joined["label"], joined["y"], strict=True):
                fh.write(
                    orjson.dumps({"request_id": rid, "label": label, "y": y, "received": received}) + b"\n"
                )
    return {
        "service": spec.name,
        "file": str(path),
        **counts,
        "unknown_ids": int((~known).sum()),
        "unknown_examples": rows.loc[~known, "request_id"].head(5).tolist(),
        "joined": len(joined),
        "labels_file": str(target),
    }


def read_labels(log_dir: Path, service: str) -> dict[str, float]:
    """Every accepted label of a service by request id (a later label of an id wins).

    Args:
        log_dir: The prediction log folder.
        service: The service's name.

    Returns:
        request id → the model's target value.
    """
    out: dict[str, float] = {}
    for record in _lines(labels_path(log_dir, service)):
        out[record["request_id"]] = float(record["y"])
    return out


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)
