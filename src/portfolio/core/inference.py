"""Turning validated inputs into a service's outputs, identically for the API, batch prediction,
evaluation and the dashboard."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from portfolio.core.registry import LoadedModel
from portfolio.core.schema import coerce
from portfolio.core.spec import ServiceSpec


class Predictor:
    """A loaded champion plus its spec: ``predict_frame`` maps typed rows to output columns."""

    def __init__(self, spec: ServiceSpec, loaded: LoadedModel):
        self.spec = spec
        self.loaded = loaded
        self.model = loaded.model
        self.version = loaded.version
        self.threshold = loaded.threshold

    @property
    def output_columns(self) -> list[str]:
        if self.spec.task == "classification":
            extra = list(self.spec.extra_output_columns)
            return ["probability", "prediction", *extra]
        t = self.spec.target
        return [t, f"{t}_low", f"{t}_high"]

    def predict_frame(self, typed: pd.DataFrame) -> pd.DataFrame:
        """Rows must already be validated and typed (``schema.validate_frame``/``coerce``)."""
        X = typed[self.spec.feature_names]
        if self.spec.task == "classification":
            proba = np.asarray(self.model.predict_proba(X)[:, 1], dtype=float)
            assert self.threshold is not None
            out = pd.DataFrame(
                {"probability": proba, "prediction": (proba >= self.threshold).astype(int)},
                index=typed.index,
            )
            if self.spec.extra_outputs is not None:
                extra = self.spec.extra_outputs(X, proba, self)
                for col in self.spec.extra_output_columns:
                    out[col] = extra[col]
            return out
        point, low, high = self.model.predict_interval(X)
        t = self.spec.target
        return pd.DataFrame({t: point, f"{t}_low": low, f"{t}_high": high}, index=typed.index)

    def predict_records(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """API path: records already validated by the request model."""
        frame = pd.DataFrame.from_records(records, columns=self.spec.feature_names)
        typed, _ = coerce(frame, self.spec.fields)
        out = self.predict_frame(typed)
        return out.to_dict(orient="records")  # type: ignore[return-value]
