"""The project's own estimators keep scikit-learn's estimator contract (``parametrize_with_checks``):
clone, get/set_params, fit returning self, learned state ending in ``_``, not fitted errors."""

from __future__ import annotations

from typing import Any

from sklearn.linear_model import LinearRegression
from sklearn.utils.estimator_checks import parametrize_with_checks

from portfolio.core.estimators import IntervalRegressor

# A price target is one column: a 2-D y goes to the wrapped estimator unchanged (no conversion
# warning of our own).
EXPECTED_FAILED = {"check_supervised_y_2d": "y is passed to the wrapped estimator as given"}


@parametrize_with_checks(
    [IntervalRegressor(LinearRegression())], expected_failed_checks=lambda est: EXPECTED_FAILED
)
def test_estimator_contract(estimator: Any, check: Any) -> None:
    name = getattr(check, "func", check).__name__
    if name == "check_array_api_input":
        # scikit-learn runs this one only with SCIPY_ARRAY_API=1 and skips it otherwise; it
        # applies to estimators that claim array API support, which ours must not claim.
        assert not estimator.__sklearn_tags__().array_api_support
        return
    check(estimator)
