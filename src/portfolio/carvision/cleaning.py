"""CarVision data cleaning: every rule in one place, each with its reason and its count.

Two kinds of rules, deliberately separated:

1. **Training-only exclusions** (``TRAINING_RULES``, applied by ``clean_training``). Rows whose
   *target* is not a real asking price are excluded from training and from the hold-out the core
   evaluates on; nothing is ever dropped at prediction time (there is no price there). Counts per
   rule go to the training log, ``data_report.json`` in MLflow, the model card and the dashboard.

   - ``price_below_1000``: placeholder or implausible prices. Sellers type $1, $10 or $123 to get a
     listing published and then negotiate; about 2.7% of the listings are below $1,000 and most of
     them are far below any vehicle's value.
   - ``price_above_100000``: extreme outliers (a handful of $100k+ listings: collector cars and
     typos such as $375,000 for a pickup); too rare to learn from, large enough to dominate RMSE.

   The kept range, $1,000-$100,000, is the range the service is specified and measured on.

2. **Missing or placeholder inputs** are handled *inside* the model pipeline (``features.py``), so
   training, ``/predict``, batch scoring and the dashboard treat them identically and no row is
   dropped because a field is empty:

   - ``model_year``, ``cylinders``, ``odometer`` missing → left missing (NaN); the tree models
     learn where missing rows belong, and the derived features (age, miles per year) stay missing.
   - ``paint_color`` missing → its own category ``"unknown"``.
   - ``is_4wd`` empty → 0 (the source marks 4WD vehicles with 1 and leaves the rest empty).
   - ``date_posted`` (format ``M/D/YYYY``) missing → the median posting date of the training data,
     learned at fit time (``VehicleFeatures.reference_day_``).
   - ``days_listed`` missing → the median of the training data, learned at fit time.
   - ``model`` is lower-cased with whitespace collapsed; its first word is the make.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from portfolio.core.spec import CleaningReport

TARGET = "price"
PRICE_MIN = 1_000.0
PRICE_MAX = 100_000.0
DATE_FORMAT = "%m/%d/%Y"
MISSING_CATEGORY = "unknown"


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    excludes: Callable[[pd.DataFrame], pd.Series]


TRAINING_RULES: tuple[Rule, ...] = (
    Rule(
        "price_below_1000",
        f"placeholder or implausible price (< ${PRICE_MIN:,.0f}, e.g. $1)",
        lambda df: df[TARGET] < PRICE_MIN,
    ),
    Rule(
        "price_above_100000",
        f"extreme outlier price (> ${PRICE_MAX:,.0f})",
        lambda df: df[TARGET] > PRICE_MAX,
    ),
)

# The in-pipeline handling of missing inputs, as (field, rule) rows for the model card/dashboard.
PIPELINE_RULES: tuple[tuple[str, str], ...] = (
    ("model_year", "missing → kept missing; age and miles/year missing too (trees route them)"),
    ("cylinders", "missing → kept missing (trees route them)"),
    ("odometer", "missing → kept missing; miles/year missing too"),
    ("paint_color", f"missing → category '{MISSING_CATEGORY}'"),
    ("is_4wd", "empty → 0 (not 4WD)"),
    ("date_posted", "parsed as M/D/YYYY; missing → median training posting date"),
    ("days_listed", "missing → median of the training data"),
    ("model", "lower-cased, spaces collapsed; first word = make"),
)


def clean_training(df: pd.DataFrame) -> tuple[pd.DataFrame, CleaningReport]:
    """Apply ``TRAINING_RULES`` in order; each excluded row is counted once, under the first rule
    that excludes it. ``df`` holds validated features plus the numeric ``price`` column."""
    keep = pd.Series(True, index=df.index)
    counts: dict[str, int] = {}
    for rule in TRAINING_RULES:
        hit = rule.excludes(df).fillna(False).astype(bool) & keep
        counts[rule.name] = int(hit.sum())
        keep &= ~hit
    out = df.loc[keep]
    return out, CleaningReport(excluded_by_rule=counts, rows_in=len(df), rows_out=len(out))


def rule_descriptions() -> dict[str, str]:
    return {r.name: r.description for r in TRAINING_RULES}
