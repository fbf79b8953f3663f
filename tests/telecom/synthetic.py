"""Small telco-like frames for unit tests (same columns and categories as the real file)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from portfolio.telecom.spec import FIELDS


def raw_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Raw text columns as the CSV holds them (TotalCharges blank when tenure is 0), plus
    ``customerID`` and ``Churn`` driven by contract, tenure and fibre."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {"customerID": [f"{i:04d}-TEST" for i in range(n)]}
    for f in FIELDS:
        if f.categories is not None:
            data[f.name] = rng.choice(list(f.categories), n)
    tenure = rng.integers(1, 73, n)
    tenure[:5] = 0
    monthly = rng.uniform(18, 119, n).round(2)
    total = (tenure * monthly * rng.uniform(0.9, 1.1, n)).round(2)
    data["SeniorCitizen"] = rng.integers(0, 2, n).astype(str)
    data["tenure"] = tenure.astype(str)
    data["MonthlyCharges"] = monthly.astype(str)
    data["TotalCharges"] = np.where(tenure == 0, " ", total.astype(str))
    frame = pd.DataFrame(data)
    logit = (
        1.5 * (frame["Contract"] == "Month-to-month")
        - 0.04 * tenure
        + 0.8 * (frame["InternetService"] == "Fiber optic")
        - 0.5
    )
    churn = rng.random(n) < 1 / (1 + np.exp(-logit))
    frame["Churn"] = np.where(churn, "Yes", "No")
    return frame


def typed_frame(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Validated, typed features and the 0/1 target (what the core hands to a pipeline)."""
    from portfolio.core.schema import validate_frame
    from portfolio.telecom.spec import SPEC

    raw = raw_frame(n, seed)
    result = validate_frame(raw, SPEC.fields)
    assert result.n_invalid == 0, result.summary()
    return result.frame[SPEC.feature_names], SPEC.encode_target(raw["Churn"]).astype(int)
