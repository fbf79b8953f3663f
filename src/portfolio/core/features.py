"""Reusable preprocessing blocks for the services' pipelines (one place, many specs)."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def tabular_preprocessor(
    numeric: Sequence[str],
    categorical: Sequence[str],
    *,
    scale: bool = False,
    impute_indicator: bool = True,
) -> ColumnTransformer:
    """Median-impute numerics (with a missing-indicator so the model can learn from the gap),
    optionally scale them; one-hot categoricals, ignoring categories unseen at fit time."""
    num_steps: list[tuple[str, object]] = [
        ("impute", SimpleImputer(strategy="median", add_indicator=impute_indicator))
    ]
    if scale:
        num_steps.append(("scale", StandardScaler()))
    return ColumnTransformer(
        [
            ("num", Pipeline(num_steps), list(numeric)),
            (
                "cat",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                list(categorical),
            ),
        ],
        remainder="drop",
        verbose_feature_names_out=False,
    )
