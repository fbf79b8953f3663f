"""One record explained: its prediction plus additive per-field contributions (``POST /explain``
and ``portfolio explain``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from portfolio.core.explain.shapley import explain_frame, explanation_body
from portfolio.core.monitoring.reference import ReferenceUnavailable, typed_frame


def explain_record(
    predictor: Any, record: Mapping[str, Any], background: pd.DataFrame | None, why_none: str = ""
) -> dict[str, Any]:
    """The prediction of one validated record and its explanation.

    Args:
        predictor: The served ``Predictor``.
        record: One record, as the request model accepted it.
        background: Training rows of the model (sampling Shapley needs them; TreeSHAP does not).
        why_none: Why there is no background, for the error message.

    Returns:
        The prediction's fields plus ``method``, ``base_value``, ``output_value`` and the
        contributions sorted by size. Raises ReferenceUnavailable when the model needs
        background rows and none were given.
    """
    spec = predictor.spec
    X = typed_frame(pd.DataFrame([dict(record)]), spec.fields)
    try:
        exp = explain_frame(
            spec.strategy, predictor.model, X, score=predictor.scores_frame, background=background
        )
    except ValueError as exc:
        raise ReferenceUnavailable(f"cannot explain: {exc} ({why_none or 'no reference'})") from exc
    out = predictor.predict_records([dict(record)])[0]
    out.update(spec.strategy.constants(predictor.threshold))
    body = explanation_body(exp, X)
    for item in body["contributions"]:
        item["value"] = record.get(item["feature"])  # as sent (the typed frame has floats)
    return dict(out | body)
