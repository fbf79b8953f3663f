"""Explanations of a model's predictions in its input fields.

- ``substitution``: reference substitution, the per-prediction ``top_factors`` of a classifier
  (one extra model row per field, on every request).
- ``shapley``: additive explanations (exact TreeSHAP for XGBoost, sampled Shapley values
  otherwise) behind ``POST /explain`` and the training-time importance.
"""

from portfolio.core.explain.substitution import ReferenceProfile

# Models registered before this package existed name ``portfolio.core.explain.ReferenceProfile``;
# skops resolves that name here, so they still load.
__all__ = ["ReferenceProfile"]
